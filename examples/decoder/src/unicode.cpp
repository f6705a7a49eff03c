#include "unicode.hpp"

namespace redknot::decoder {

namespace {

bool in(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

bool is_space(char32_t c) {
  return in(c, 0x09, 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || in(c, 0x2000, 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_number(char32_t c) {
  return in(c, '0', '9') || c == 0xB2 || c == 0xB3 || c == 0xB9 || in(c, 0xBC, 0xBE) || in(c, 0x660, 0x669) ||
         in(c, 0x6F0, 0x6F9) || in(c, 0x966, 0x96F) || in(c, 0x2070, 0x2079) || in(c, 0x2080, 0x2089) ||
         in(c, 0x2150, 0x2189) || in(c, 0x2460, 0x249B) || in(c, 0x2776, 0x2793) || c == 0x3007 ||
         in(c, 0xFF10, 0xFF19);
}

// Punctuation, symbols and combining marks: neither letter, number nor space.
bool is_other(char32_t c) {
  if (c < 0x80) return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || in(c, '0', '9') || is_space(c));
  if (c < 0xC0) return c != 0xAA && c != 0xB5 && c != 0xBA;
  return c == 0xD7 || c == 0xF7 || in(c, 0x300, 0x36F) || c == 0x37E || c == 0x387 || in(c, 0x483, 0x489) ||
         in(c, 0x55A, 0x55F) || in(c, 0x591, 0x5C7) || in(c, 0x600, 0x60F) || in(c, 0x64B, 0x65F) ||
         in(c, 0x2010, 0x2027) || in(c, 0x2030, 0x205E) || in(c, 0x20A0, 0x20CF) || in(c, 0x20D0, 0x20FF) ||
         in(c, 0x2190, 0x245F) || in(c, 0x2500, 0x2775) || in(c, 0x2794, 0x2BFF) || in(c, 0x2E00, 0x2E7F) ||
         in(c, 0x3001, 0x3006) || in(c, 0x3008, 0x303F) || in(c, 0xFE00, 0xFE0F) || in(c, 0xFE30, 0xFE6F) ||
         in(c, 0xFF01, 0xFF0F) || in(c, 0xFF1A, 0xFF20) || in(c, 0xFF3B, 0xFF40) || in(c, 0xFF5B, 0xFF65) ||
         in(c, 0x1F000, 0x1FAFF);
}

}  // namespace

CharClass char_class(char32_t cp) {
  if (is_space(cp)) return CharClass::kSpace;
  if (is_number(cp)) return CharClass::kNumber;
  if (is_other(cp)) return CharClass::kOther;
  return CharClass::kLetter;
}

std::vector<char32_t> utf8_decode(std::string_view s, std::vector<std::size_t>* offsets) {
  if (offsets) offsets->clear();
  std::vector<char32_t> out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (offsets) offsets->push_back(i);
    if (!ok) {
      out.push_back(b0);
      ++i;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  if (offsets) offsets->push_back(s.size());
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace redknot::decoder
