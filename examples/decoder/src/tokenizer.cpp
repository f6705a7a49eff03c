#include "tokenizer.hpp"

#include <algorithm>
#include <climits>

#include "redknot/error.hpp"
#include "unicode.hpp"

namespace redknot::decoder {

namespace {

// GPT-2's reversible byte -> code point map: printable bytes stand for themselves, the others are shifted to
// 256 + n so that every token string is printable.
char32_t byte_to_symbol(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (printable) return static_cast<char32_t>(b);
  int n = 0;
  for (int x = 0; x < b; ++x)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
  return static_cast<char32_t>(256 + n);
}

constexpr int kTokenControl = 3;
constexpr int kTokenUserDefined = 4;

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  Tokenizer t;
  const std::string model = f.get_string("tokenizer.ggml.model");
  require(model == "gpt2", "tokenizer: only byte-level BPE (tokenizer.ggml.model = gpt2) is supported, got '",
          model, "'");
  const std::string pre = f.get_string("tokenizer.ggml.pre", "gpt2");
  t.split_digits_ = pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r";
  for (const auto& v : f.get("tokenizer.ggml.tokens").arr) t.tokens_.push_back(v.s);
  for (std::size_t i = 0; i < t.tokens_.size(); ++i)
    t.token_ids_.emplace(t.tokens_[i], static_cast<std::int32_t>(i));
  if (f.has("tokenizer.ggml.token_type")) {
    const auto& types = f.get("tokenizer.ggml.token_type").arr;
    for (std::size_t i = 0; i < types.size() && i < t.tokens_.size(); ++i)
      if (types[i].i == kTokenControl || types[i].i == kTokenUserDefined) t.specials_.push_back(t.tokens_[i]);
  }
  std::sort(t.specials_.begin(), t.specials_.end(), [](auto& a, auto& b) { return a.size() > b.size(); });
  const auto& merges = f.get("tokenizer.ggml.merges").arr;
  for (std::size_t i = 0; i < merges.size(); ++i)
    t.merge_rank_.emplace(merges[i].s, static_cast<std::int32_t>(i));
  for (int b = 0; b < 256; ++b) {
    const char32_t s = byte_to_symbol(b);
    utf8_append(t.byte_sym_[b], s);
    t.sym_byte_[s] = static_cast<std::uint8_t>(b);
  }
  t.bos_ = static_cast<std::int32_t>(f.get_int("tokenizer.ggml.bos_token_id", -1));
  t.eos_ = static_cast<std::int32_t>(f.get_int("tokenizer.ggml.eos_token_id", -1));
  t.add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", false);
  t.im_end_ = t.id_of("<|im_end|>");
  const std::string tmpl = f.get_string("tokenizer.chat_template");
  t.chatml_ = tmpl.find("<|im_start|>") != std::string::npos && t.im_end_ >= 0;
  // A template that writes a default system turn carries it literally: keep it so prompts match training.
  const std::string open = "<|im_start|>system\n";
  if (auto a = tmpl.find(open); a != std::string::npos) {
    a += open.size();
    if (auto b = tmpl.find("<|im_end|>", a); b != std::string::npos)
      t.default_system_ = tmpl.substr(a, b - a);
  }
  return t;
}

std::int32_t Tokenizer::id_of(const std::string& token) const {
  auto it = token_ids_.find(token);
  return it == token_ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_end_of_generation(std::int32_t id) const {
  return id == eos_ || (id >= 0 && id == im_end_);
}

std::string Tokenizer::apply_chat_template(std::string_view user) const {
  if (!chatml_) return std::string(user);
  std::string s;
  if (!default_system_.empty()) s += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  s += "<|im_start|>user\n";
  s += user;
  s += "<|im_end|>\n<|im_start|>assistant\n";
  return s;
}

// GPT-2 split pattern, hand-written over code points:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \p{N} matching one digit at a time when split_digits_ is set.
void Tokenizer::pre_tokenize(std::string_view text, std::vector<std::string_view>& pieces) const {
  std::vector<std::size_t> off;
  const std::vector<char32_t> cp = utf8_decode(text, &off);
  const std::size_t n = cp.size();
  std::vector<CharClass> cls(n);
  for (std::size_t i = 0; i < n; ++i) cls[i] = char_class(cp[i]);
  auto emit = [&](std::size_t a, std::size_t b) { pieces.push_back(text.substr(off[a], off[b] - off[a])); };
  std::size_t i = 0;
  while (i < n) {
    if (cp[i] == U'\'' && i + 1 < n) {
      const char32_t c1 = cp[i + 1];
      const char32_t c2 = i + 2 < n ? cp[i + 2] : 0;
      std::size_t len = 0;
      if (c1 == U's' || c1 == U't' || c1 == U'm' || c1 == U'd')
        len = 2;
      else if ((c1 == U'r' && c2 == U'e') || (c1 == U'v' && c2 == U'e') || (c1 == U'l' && c2 == U'l'))
        len = 3;
      if (len) {
        emit(i, i + len);
        i += len;
        continue;
      }
    }
    const std::size_t j = (cp[i] == U' ' && i + 1 < n && cls[i + 1] != CharClass::kSpace) ? i + 1 : i;
    if (cls[j] != CharClass::kSpace) {
      const CharClass c = cls[j];
      std::size_t k = j + 1;
      if (c == CharClass::kNumber && split_digits_) {
        // Digits stand alone; a space before one is a piece of its own (the digit split runs first).
        if (j != i) {
          emit(i, j);
          i = j;
          continue;
        }
      } else {
        while (k < n && cls[k] == c) ++k;
      }
      emit(i, k);
      i = k;
      continue;
    }
    std::size_t k = i;
    while (k < n && cls[k] == CharClass::kSpace) ++k;
    // \s+(?!\S): leave the last space to prefix the next word unless the run ends the text (a digit ends it
    // too when digits are split first, as they are pieces of their own then).
    const bool run_ends = k == n || (split_digits_ && cls[k] == CharClass::kNumber);
    const std::size_t end = (run_ends || k - i == 1) ? k : k - 1;
    emit(i, end);
    i = end;
  }
}

void Tokenizer::bpe(std::string_view piece, std::vector<std::int32_t>& out) const {
  std::string key(piece);
  if (auto it = cache_.find(key); it != cache_.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  std::vector<std::string> sym;
  for (unsigned char b : piece) sym.push_back(byte_sym_[b]);
  while (sym.size() > 1) {
    int best = INT_MAX;
    std::size_t at = 0;
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = merge_rank_.find(sym[i] + " " + sym[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  std::vector<std::int32_t> ids;
  for (const auto& s : sym) {
    auto it = token_ids_.find(s);
    if (it != token_ids_.end()) {
      ids.push_back(it->second);
      continue;
    }
    // No merge produced a known token: fall back to single bytes (every byte symbol is in a GPT-2
    // vocabulary).
    for (char32_t c : utf8_decode(s)) {
      std::string one;
      utf8_append(one, c);
      auto b = token_ids_.find(one);
      require(b != token_ids_.end(), "tokenizer: byte symbol missing from the vocabulary");
      ids.push_back(b->second);
    }
  }
  if (cache_.size() < 200000) cache_.emplace(std::move(key), ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<std::int32_t> ids;
  if (add_bos_ && bos_ >= 0) ids.push_back(bos_);
  std::vector<std::string_view> pieces;
  std::size_t start = 0;
  auto flush = [&](std::size_t end) {
    if (end <= start) return;
    pieces.clear();
    pre_tokenize(text.substr(start, end - start), pieces);
    for (auto p : pieces) bpe(p, ids);
  };
  for (std::size_t i = 0; i < text.size();) {
    const std::string* hit = nullptr;
    if (parse_special && text[i] == '<')
      for (const auto& s : specials_)
        if (!s.empty() && text.compare(i, s.size(), s) == 0) {
          hit = &s;
          break;
        }
    if (!hit) {
      ++i;
      continue;
    }
    flush(i);
    ids.push_back(token_ids_.at(*hit));
    i += hit->size();
    start = i;
  }
  flush(text.size());
  return ids;
}

std::string Tokenizer::token_bytes(std::int32_t id) const {
  require(id >= 0 && id < vocab_size(), "tokenizer: token id ", id, " out of range [0, ", vocab_size(), ")");
  std::string out;
  for (char32_t c : utf8_decode(tokens_[static_cast<std::size_t>(id)])) {
    auto it = sym_byte_.find(c);
    if (it != sym_byte_.end())
      out += static_cast<char>(it->second);
    else
      utf8_append(out, c);  // special tokens are plain text
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<std::int32_t>& ids) const {
  std::string s;
  for (auto id : ids) s += token_bytes(id);
  return s;
}

}  // namespace redknot::decoder
