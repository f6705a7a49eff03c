#include "pd_transfer.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "redknot/error.hpp"
#include "redknot/swap_ticket_codec.hpp"

namespace redknot::decoder {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr std::uint32_t kPdMagic = 0x44504B52u;  // "RKPD"
constexpr std::uint32_t kPdVersion = 1;
constexpr std::size_t kPdHead = 16;  // magic, version, position, first token
constexpr std::size_t kPdTail = 8;   // XXH3-64 of everything before it

// Little-endian byte by byte, as redknot's own formats (src/little_endian.hpp is internal to the core).
template <class U>
void put_le(std::byte* p, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i)
    p[i] = static_cast<std::byte>(static_cast<std::uint64_t>(v) >> (8 * i));
}
template <class U>
U get_le(const std::byte* p) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return static_cast<U>(v);
}

}  // namespace

std::string pd_ticket_name(std::string_view name) { return std::string(name) + ".ticket"; }

std::vector<std::byte> encode_pd_handoff(const PdHandoff& h) {
  const std::vector<std::byte> ticket = encode_swap_ticket(h.ticket);
  std::vector<std::byte> out(kPdHead + ticket.size() + kPdTail);
  put_le<std::uint32_t>(out.data(), kPdMagic);
  put_le<std::uint32_t>(out.data() + 4, kPdVersion);
  put_le<std::int32_t>(out.data() + 8, h.position);
  put_le<std::int32_t>(out.data() + 12, h.first_token);
  std::memcpy(out.data() + kPdHead, ticket.data(), ticket.size());
  const std::size_t body = kPdHead + ticket.size();
  put_le<std::uint64_t>(out.data() + body, object_digest(std::span<const std::byte>(out).first(body)));
  return out;
}

std::optional<PdHandoff> decode_pd_handoff(std::span<const std::byte> bytes, std::string* why) {
  const auto fail = [&](const auto&... parts) -> std::optional<PdHandoff> {
    if (why != nullptr) *why = detail::concat("handoff record: ", parts...);
    return std::nullopt;
  };
  if (bytes.size() < kPdHead + kPdTail) return fail(bytes.size(), " bytes, too short (truncated)");
  if (get_le<std::uint32_t>(bytes.data()) != kPdMagic) return fail("not a handoff record (magic)");
  if (const auto v = get_le<std::uint32_t>(bytes.data() + 4); v != kPdVersion)
    return fail("version ", v, ", this build reads ", kPdVersion);
  const std::size_t body = bytes.size() - kPdTail;
  if (object_digest(bytes.first(body)) != get_le<std::uint64_t>(bytes.data() + body))
    return fail("checksum mismatch (corrupt or truncated)");
  PdHandoff h;
  h.position = get_le<std::int32_t>(bytes.data() + 8);
  h.first_token = get_le<std::int32_t>(bytes.data() + 12);
  std::string reason;
  auto t = decode_swap_ticket(bytes.subspan(kPdHead, body - kPdHead), &reason);
  if (!t) return fail(reason);
  h.ticket = std::move(*t);
  if (h.position <= 0 || h.first_token < 0)
    return fail("position ", h.position, ", first token ", h.first_token);
  // Every layer of a prefilled prompt continues at the prompt's length.
  for (const std::int32_t p : h.ticket.next_pos)
    if (p != h.position) return fail("the ticket continues a layer at ", p, ", the record at ", h.position);
  return h;
}

PdPublishStats publish_prefill(Session& s, std::int32_t first_token, KvTier& tier, std::uint64_t model_fp,
                               std::string_view name) {
  const auto t0 = Clock::now();
  const std::string ticket_name = pd_ticket_name(name);
  check_object_name(ticket_name);
  require(!tier.contains(ticket_name), "publish_prefill: tier object '", ticket_name,
          "' already exists (name '", name, "' is in use by another handoff): pick a unique name");
  require(first_token >= 0 && first_token < s.model().config().vocab,
          "publish_prefill: first_token=", first_token, " is not in [0, ", s.model().config().vocab, ")");
  PdHandoff h;
  h.position = s.position();
  h.first_token = first_token;
  h.ticket = s.swap_out(tier, model_fp, name);
  const std::vector<std::byte> record = encode_pd_handoff(h);
  if (!tier.put(ticket_name, record)) {
    discard_swap(h.ticket, tier);
    throw Unavailable(detail::concat("publish_prefill: the tier refused the handoff record '", ticket_name,
                                     "' (", record.size(), " bytes); the KV objects were removed"));
  }
  PdPublishStats st;
  st.kv_bytes = h.ticket.bytes();
  st.ticket_bytes = static_cast<std::int64_t>(record.size());
  st.objects = static_cast<std::int64_t>(h.ticket.objects.size());
  st.seconds = since(t0);
  return st;
}

PdHandoff restore_decode(Session& s, KvTier& tier, std::uint64_t model_fp, std::string_view name,
                         PdRestoreStats* stats) {
  const auto t0 = Clock::now();
  PdRestoreStats st;
  require(s.position() == 0 && !s.swapped_out(), "restore_decode: the session is at position ", s.position(),
          " (a fresh session is needed)");
  const std::string ticket_name = pd_ticket_name(name);
  check_object_name(ticket_name);
  const auto record = tier.get(ticket_name);
  require<NotFound>(record.has_value(), "restore_decode: no handoff record '", ticket_name,
                    "' in the tier (not published, already consumed, evicted or unreadable)");
  std::string why;
  auto decoded = decode_pd_handoff(*record, &why);
  const int layers = s.store().shape().num_layers;
  // A handoff that cannot be restored is removed whole: by its ticket's list, or when the ticket cannot be
  // trusted, by the names swap_out gives a sequence of this model's layers.
  const auto give_up = [&](const PdHandoff* h, const auto&... parts) {
    if (h != nullptr) {
      discard_swap(h->ticket, tier);
    } else {
      for (int l = 0; l < layers; ++l)
        for (const char* part : {".local", ".global"}) tier.remove(detail::concat(name, ".l", l, part));
    }
    tier.remove(ticket_name);
    throw Unavailable(detail::concat("restore_decode '", name, "': ", parts...));
  };
  if (!decoded) give_up(nullptr, why);
  PdHandoff h = std::move(*decoded);
  st.read_ticket_s = since(t0);
  const Store& store = s.store();
  const ModelShape& sh = store.shape();
  if (h.ticket.model_fp != model_fp)
    give_up(&h, "published for another model (fingerprint ", h.ticket.model_fp, ", this one ", model_fp, ")");
  if (h.ticket.next_pos.size() != static_cast<std::size_t>(sh.num_layers))
    give_up(&h, "the ticket has ", h.ticket.next_pos.size(), " layers, the model ", sh.num_layers);
  if (h.first_token >= s.model().config().vocab)
    give_up(&h, "first token ", h.first_token, " is outside the vocabulary (", s.model().config().vocab, ")");
  if (h.position >= s.options().max_context)
    give_up(&h, "the prompt's ", h.position,
            " tokens leave no room in max_context=", s.options().max_context);
  if (h.ticket.next_pos.front() != h.position)
    give_up(&h, "the record's position ", h.position, " is not where the ticket's sequence stops (",
            h.ticket.next_pos.front(), ")");
  for (const SwapObject& o : h.ticket.objects)
    if (!tier.contains(o.name)) give_up(&h, "object ", o.name, " is not in the tier");

  const auto w0 = Clock::now();
  SwapInStats in;
  try {
    s.swap_in(h.ticket, tier, tier, nullptr, &in);  // a fresh session adopts the sequence and its position
  } catch (const Unavailable& e) {
    give_up(nullptr, e.what());  // swap_in removed the objects
  }
  tier.remove(ticket_name);
  st.swap_in_s = since(w0);
  st.kv_bytes = in.bytes;
  st.seconds = since(t0);
  if (stats != nullptr) *stats = st;
  return h;
}

std::vector<std::int32_t> continue_greedy(Session& s, std::int32_t first, int max_new,
                                          const std::function<bool(std::int32_t)>& stop,
                                          std::vector<float>* all_logits) {
  std::vector<std::int32_t> out;
  std::vector<float> logits;
  std::int32_t next = first;
  while (static_cast<int>(out.size()) < max_new) {
    out.push_back(next);
    if ((stop && stop(next)) || static_cast<int>(out.size()) == max_new ||
        s.position() >= s.options().max_context)
      break;
    s.forward(std::span<const std::int32_t>(&next, 1), false, logits);
    if (all_logits != nullptr) all_logits->insert(all_logits->end(), logits.begin(), logits.end());
    next = argmax(logits);
  }
  return out;
}

std::int64_t pd_decode_store_pages(const LlamaModel& model, int page_size, std::int64_t prompt, int max_new) {
  const LlamaConfig& c = model.config();
  require(page_size > 0 && prompt > 0 && max_new >= 0, "pd_decode_store_pages: page_size=", page_size,
          " prompt=", prompt, " max_new=", max_new);
  const std::int64_t heads = static_cast<std::int64_t>(c.n_layers) * c.n_kv_heads;
  const std::int64_t per_head = (prompt + max_new + 1 + page_size - 1) / page_size + 1;
  return heads * (per_head + 2);
}

}  // namespace redknot::decoder
