// The little Unicode a byte-level BPE pre-tokenizer needs: UTF-8 decoding and the \s, \p{L}, \p{N} classes.
//
// The classes are exact for ASCII and Latin-1 and cover the common blocks beyond (punctuation, symbols,
// digits of major scripts, combining marks); any other code point counts as a letter, which is what nearly
// every unlisted assigned code point is. A full table would be 100 KB for cases calibration text never hits.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace redknot::decoder {

enum class CharClass : std::uint8_t { kLetter, kNumber, kSpace, kOther };

CharClass char_class(char32_t cp);

// Decodes UTF-8; an invalid byte decodes to itself as a code point in [0x80, 0xFF] so no input is lost.
// offsets (optional) receives the byte offset of every code point plus a final s.size().
std::vector<char32_t> utf8_decode(std::string_view s, std::vector<std::size_t>* offsets = nullptr);
void utf8_append(std::string& out, char32_t cp);

}  // namespace redknot::decoder
