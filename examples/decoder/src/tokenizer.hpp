// Byte-level BPE tokenizer (GPT-2 family) read from GGUF metadata (tokenizer.ggml.*), plus the chat template
// of ChatML instruct models.
//
// Pre-tokenization follows the model's `tokenizer.ggml.pre`: "gpt2" uses the GPT-2 split pattern; "smollm"
// (and other starcoder-style vocabularies) first splits every digit on its own. Special (control and
// user-defined) tokens are matched verbatim in the text when `parse_special` is set.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "gguf.hpp"

namespace redknot::decoder {

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GgufFile& f);

  std::vector<std::int32_t> encode(std::string_view text, bool parse_special = true) const;
  // Bytes of one token (special tokens decode to their text).
  std::string token_bytes(std::int32_t id) const;
  std::string decode(const std::vector<std::int32_t>& ids) const;

  // The prompt an instruct model expects for one user message (empty system message: the template's default).
  std::string apply_chat_template(std::string_view user_message) const;
  bool has_chat_template() const { return chatml_; }

  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  std::int32_t bos() const { return bos_; }
  std::int32_t eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  // Ids that end a generation (eos and, for ChatML, <|im_end|>).
  bool is_end_of_generation(std::int32_t id) const;
  std::int32_t id_of(const std::string& token) const;  // -1 if absent

 private:
  void pre_tokenize(std::string_view text, std::vector<std::string_view>& pieces) const;
  void bpe(std::string_view piece, std::vector<std::int32_t>& out) const;

  std::vector<std::string> tokens_;  // in the byte-to-unicode alphabet
  std::unordered_map<std::string, std::int32_t> token_ids_;
  std::unordered_map<std::string, std::int32_t> merge_rank_;  // "left right" -> rank
  std::vector<std::string> specials_;                         // longest first
  std::string byte_sym_[256];                                 // byte -> its symbol (UTF-8)
  std::unordered_map<char32_t, std::uint8_t> sym_byte_;       // symbol code point -> byte
  bool split_digits_ = false;
  bool chatml_ = false;
  std::string default_system_;
  std::int32_t bos_ = -1, eos_ = -1, im_end_ = -1;
  bool add_bos_ = false;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

}  // namespace redknot::decoder
