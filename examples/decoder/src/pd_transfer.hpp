// Prefill/decode disaggregation over a KvTier: one process prefills a prompt and publishes its KV, another
// restores it into a store of its own and decodes on.
//
// What is published under a name N, in one tier:
//   - the sequence's objects "N.l<layer>.{local,global}" (Session::swap_out: every slice the decode side
//     needs, by head class: local heads' sink + window runs, global heads' whole history);
//   - the handoff record "N.ticket", written last so that a reader that finds it finds every object: a small
//     versioned record (magic "RKPD") holding the prompt's length, the first generated token (the prefill
//     side samples it from the prompt's last logits, so the decode side starts with a forward of one token)
//     and the encoded SwapTicket (swap_ticket_codec.hpp), closed by an XXH3-64 of all of it.
// A restore reads and checks the record, swaps the objects into the decode process's session and removes
// what it read (the objects and the record): a handoff is consumed once.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "redknot/tiers.hpp"
#include "session.hpp"

namespace redknot::decoder {

struct PdHandoff {
  std::int32_t position = 0;     // the prompt's length: where decoding continues
  std::int32_t first_token = 0;  // argmax of the prompt's last logits
  SwapTicket ticket;
};

// The record's name for handoff `name`.
std::string pd_ticket_name(std::string_view name);

std::vector<std::byte> encode_pd_handoff(const PdHandoff& h);
// nullopt with the reason in *why for bytes that are not a whole, intact record of this version.
std::optional<PdHandoff> decode_pd_handoff(std::span<const std::byte> bytes, std::string* why = nullptr);

struct PdPublishStats {
  std::int64_t kv_bytes = 0;      // the KV objects, as put into the tier
  std::int64_t ticket_bytes = 0;  // the handoff record
  std::int64_t objects = 0;       // KV objects (the record not counted)
  double seconds = 0;             // swap_out + the record's put
};

// Publishes the sequence session `s` holds (prefilled; its position is the prompt's length) under `name`,
// with `first_token`: the session's sequence leaves its store (s.swapped_out() afterwards). InvalidArgument
// when an object or the record of that name already exists (nothing written); Unavailable when the tier
// refuses an object (what was written is removed, the sequence stays in the session).
PdPublishStats publish_prefill(Session& s, std::int32_t first_token, KvTier& tier, std::uint64_t model_fp,
                               std::string_view name);

struct PdRestoreStats {
  std::int64_t kv_bytes = 0;  // read from the tier (the objects)
  double read_ticket_s = 0;   // get + decode of the record
  double swap_in_s = 0;       // Session::swap_in: reads, checks, restore
  double seconds = 0;         // all of it
};

// Reads handoff `name` from `tier` into the fresh session `s` (a new, empty sequence of a store with the
// model, head map and dtype of the prefill side, and room for the prompt's KV), for model `model_fp`: the
// session adopts the published sequence and its position (Session::swap_in on a fresh session). Returns the
// record (position, first token); afterwards s.position() is the prompt's length and s holds its KV bit for
// bit. NotFound when there is no record of that name; Unavailable when the record or an object is corrupt,
// missing or foreign (another model, head map or shape) — the objects and the record are removed then, and
// the session holds no sequence (reset() to use it again); InvalidArgument when `s` is not fresh. The store
// is unchanged by a failure: it holds what it held before the call.
PdHandoff restore_decode(Session& s, KvTier& tier, std::uint64_t model_fp, std::string_view name,
                         PdRestoreStats* stats = nullptr);

// Greedy decoding as generate_tokens() does it, from a session whose next input is `first` (already
// sampled): up to max_new tokens, stopping after one that `stop` accepts or at the session's max_context.
// all_logits (optional) receives the logits of every step after the first token, concatenated.
std::vector<std::int32_t> continue_greedy(Session& s, std::int32_t first, int max_new,
                                          const std::function<bool(std::int32_t)>& stop,
                                          std::vector<float>* all_logits = nullptr);

// The pages a decode-side store needs for restore_decode of a `prompt`-token handoff followed by `max_new`
// tokens (the prompt's KV, then the decoding).
std::int64_t pd_decode_store_pages(const LlamaModel& model, int page_size, std::int64_t prompt, int max_new);

}  // namespace redknot::decoder
