// Text for calibration and evaluation: long natural documents found on the machine (licenses, package docs)
// and synthetic documents generated from a seed (fact records, needle-in-a-haystack, multi-key retrieval).
//
// Everything is deterministic for a given machine and seed, so profiles and evaluations can be rerun.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace redknot::decoder {

// Readable, mostly-ASCII text files of at least min_bytes under the given roots, sorted by path.
std::vector<std::string> find_text_files(const std::vector<std::string>& roots, std::size_t min_bytes = 4096);
std::string read_file(const std::string& path);

// The default natural-text sources: calibration reads the common licenses, evaluation the package docs
// (different texts, so a profile is not judged on what it was fitted to). Either falls back to the other.
std::vector<std::string> calibration_files();
std::vector<std::string> evaluation_files();

// Concatenation of the files' contents (blank line between), starting at file `first`, at least
// min_chars long when the files allow it (wrapping around).
std::string concat_files(const std::vector<std::string>& files, std::size_t first, std::size_t min_chars);

// A document of numbered fact records whose later part asks about earlier ones: exercises heads that copy
// from far back, which natural text alone rarely needs.
std::string synthetic_records_document(std::uint32_t seed, int n_records);

// One retrieval prompt: a haystack of filler text with facts inserted, a question, and the expected answer.
struct RetrievalCase {
  std::string haystack_before, haystack_after;  // the user message is before + facts + after + question
  std::string facts;
  std::string question;
  std::string answer_prefix;  // the assistant turn starts with this (teacher-forced)
  std::string answer;         // digits; the scored part
};

// Needle: one passkey sentence at `depth` in [0, 1] of `filler`. Multi-key: `n_keys` named passkeys at
// spread depths, the question asks for one of them.
RetrievalCase needle_case(const std::string& filler, double depth, std::uint32_t seed);
RetrievalCase multikey_case(const std::string& filler, double depth, int n_keys, std::uint32_t seed);

}  // namespace redknot::decoder
