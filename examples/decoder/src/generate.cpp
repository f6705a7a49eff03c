#include "generate.hpp"

#include <chrono>

#include "progress.hpp"
#include "redknot/error.hpp"

namespace redknot::decoder {

HeadMap head_map_for(const std::string& mode, const std::string& path, const LlamaConfig& c) {
  if (mode == "dense") return HeadMap::all_global(c.n_layers, c.n_kv_heads);
  require(mode == "redknot", "mode '", mode, "' is not one of dense, redknot");
  require(!path.empty(), "mode redknot needs --head-map");
  HeadMap m = HeadMap::load(path);
  m.validate_shape(c.n_layers, c.n_kv_heads);
  return m;
}

GenerateResult generate(const LlamaModel& model, const Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opt) {
  const std::string text = opt.chat && tok.has_chat_template() ? tok.apply_chat_template(prompt) : prompt;
  return generate_tokens(model, tok, tok.encode(text),
                         head_map_for(opt.mode, opt.head_map_path, model.config()), opt);
}

GenerateResult generate_tokens(const LlamaModel& model, const Tokenizer& tok,
                               std::vector<std::int32_t> prompt, const HeadMap& map,
                               const GenerateOptions& opt) {
  using Clock = std::chrono::steady_clock;
  require(!prompt.empty(), "generate: empty prompt");
  SessionOptions so = opt.session;
  if (so.max_context <= 0) so.max_context = static_cast<int>(prompt.size()) + opt.max_new + 1;
  Session s(model, map, so);
  GenerateResult r;
  r.prompt_tokens = prompt.size();
  r.global_heads = map.count_global_like();
  r.total_heads = map.num_layers() * map.num_kv_heads();

  const auto t0 = Clock::now();
  ProgressBar bar("prefill", opt.progress && prompt.size() > static_cast<std::size_t>(so.chunk));
  std::vector<float> logits = s.prefill(prompt, [&](std::size_t d, std::size_t t) { bar.update(d, t); });
  bar.finish();
  std::int32_t next = argmax(logits);
  const auto t1 = Clock::now();
  r.ttft_s = std::chrono::duration<double>(t1 - t0).count();
  while (static_cast<int>(r.tokens.size()) < opt.max_new) {
    r.tokens.push_back(next);
    if (tok.is_end_of_generation(next) || static_cast<int>(r.tokens.size()) == opt.max_new ||
        s.position() >= so.max_context)
      break;
    s.forward(std::span<const std::int32_t>(&next, 1), false, logits);
    next = argmax(logits);
  }
  const double decode_s = std::chrono::duration<double>(Clock::now() - t1).count();
  if (r.tokens.size() > 1 && decode_s > 0)
    r.decode_tok_s = static_cast<double>(r.tokens.size() - 1) / decode_s;
  std::vector<std::int32_t> shown = r.tokens;
  if (!shown.empty() && tok.is_end_of_generation(shown.back())) shown.pop_back();
  r.text = tok.decode(shown);
  const SequenceStats st = s.kv_stats();
  r.kv_bytes = st.bytes();
  r.kv_bytes_global = st.bytes_global;
  r.kv_bytes_local = st.bytes_local;
  return r;
}

}  // namespace redknot::decoder
