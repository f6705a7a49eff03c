#include "corpus.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

namespace redknot::decoder {

namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

namespace {

bool looks_like_prose(const std::string& head) {
  if (head.empty()) return false;
  std::size_t ok = 0, letters = 0;
  for (unsigned char c : head) {
    ok += (c >= 32 && c < 127) || c == '\n' || c == '\t';
    letters += std::isalpha(c) ? 1 : 0;
  }
  return ok * 100 >= head.size() * 97 && letters * 100 >= head.size() * 50;
}

const char* const kFillerWords[] = {"the",    "river",  "morning", "quiet",  "village", "market", "stone",
                                    "bridge", "garden", "winter",  "letter", "window",  "travel", "north",
                                    "house",  "old",    "green",   "field",  "evening", "light",  "people",
                                    "walked", "slowly", "across",  "under",  "bright",  "cloud",  "small",
                                    "boat",   "harbor", "song",    "road",   "forest"};

const char* const kNames[] = {"Alice", "Bruno", "Chen", "Dara", "Elif", "Farid", "Greta", "Hugo",
                              "Ines",  "Jonas", "Kira", "Luca", "Mira", "Nils",  "Omar",  "Priya"};

std::string digits(std::mt19937& rng, int n) {
  std::string s;
  std::uniform_int_distribution<int> d(0, 9);
  s += static_cast<char>('1' + d(rng) % 9);
  for (int i = 1; i < n; ++i) s += static_cast<char>('0' + d(rng));
  return s;
}

// Cuts text at a sentence or line end near `at`, so inserted facts do not split words.
std::size_t cut_point(const std::string& text, std::size_t at) {
  at = std::min(at, text.size());
  const std::size_t p = text.find_first_of(".\n", at);
  return p == std::string::npos ? text.size() : p + 1;
}

}  // namespace

std::vector<std::string> find_text_files(const std::vector<std::string>& roots, std::size_t min_bytes) {
  std::vector<std::string> out;
  for (const auto& root : roots) {
    std::error_code ec;
    if (!fs::exists(root, ec)) continue;
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code e2;
      if (!it->is_regular_file(e2) || it->is_symlink(e2)) continue;
      const auto ext = it->path().extension().string();
      if (ext == ".gz" || ext == ".html" || ext == ".xz" || ext == ".bz2" || ext == ".png") continue;
      if (it->file_size(e2) < min_bytes) continue;
      std::ifstream in(it->path(), std::ios::binary);
      std::string head(4096, '\0');
      in.read(head.data(), static_cast<std::streamsize>(head.size()));
      head.resize(static_cast<std::size_t>(in.gcount()));
      if (looks_like_prose(head)) out.push_back(it->path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> calibration_files() {
  auto f = find_text_files({"/usr/share/common-licenses"});
  return f.empty() ? find_text_files({"/usr/share/doc"}) : f;
}

std::vector<std::string> evaluation_files() {
  // Release notes and guides read like documentation prose; copyright files are mostly license text again.
  auto f =
      find_text_files({"/usr/share/doc/git/RelNotes", "/usr/share/doc/dpkg", "/usr/share/doc/git/howto"});
  if (f.size() < 4) f = find_text_files({"/usr/share/doc"});
  return f.empty() ? calibration_files() : f;
}

std::string concat_files(const std::vector<std::string>& files, std::size_t first, std::size_t min_chars) {
  std::string out;
  if (files.empty()) return out;
  for (std::size_t k = 0; k < files.size() && out.size() < min_chars; ++k) {
    if (!out.empty()) out += "\n\n";
    out += read_file(files[(first + k) % files.size()]);
  }
  return out;
}

std::string synthetic_records_document(std::uint32_t seed, int n_records) {
  std::mt19937 rng(seed);
  std::string doc = "Registry of shipments. Each record lists a code, a city and a weight.\n\n";
  std::vector<std::string> codes, cities;
  const char* const city[] = {"Lisbon", "Oslo", "Tunis", "Quito", "Hanoi", "Perth", "Dakar", "Riga"};
  for (int i = 0; i < n_records; ++i) {
    codes.push_back(digits(rng, 5));
    cities.push_back(city[rng() % 8]);
    doc += "Record " + std::to_string(i + 1) + ": code " + codes.back() + ", shipped to " + cities.back() +
           ", weight " + digits(rng, 3) + " kg.";
    for (int w = 0; w < 12; ++w) doc += std::string(" ") + kFillerWords[rng() % std::size(kFillerWords)];
    doc += ".\n";
  }
  doc += "\nQuestions and answers about the registry.\n";
  for (int q = 0; q < n_records; ++q) {
    const auto i = rng() % static_cast<unsigned>(n_records);
    doc += "Q: What is the code of record " + std::to_string(i + 1) + "? A: " + codes[i] + ". It went to " +
           cities[i] + ".\n";
  }
  return doc;
}

RetrievalCase needle_case(const std::string& filler, double depth, std::uint32_t seed) {
  std::mt19937 rng(seed);
  RetrievalCase c;
  c.answer = digits(rng, 5);
  const std::size_t at =
      cut_point(filler, static_cast<std::size_t>(depth * static_cast<double>(filler.size())));
  c.haystack_before = filler.substr(0, at);
  c.haystack_after = filler.substr(at);
  c.facts = "\nThe secret passkey is " + c.answer + ". Remember it, the passkey is " + c.answer + ".\n";
  c.question = "\n\nWhat is the secret passkey mentioned in the text above?";
  c.answer_prefix = "The secret passkey is ";
  return c;
}

RetrievalCase multikey_case(const std::string& filler, double depth, int n_keys, std::uint32_t seed) {
  std::mt19937 rng(seed);
  RetrievalCase c;
  std::vector<std::string> names(std::begin(kNames), std::end(kNames));
  std::shuffle(names.begin(), names.end(), rng);
  names.resize(static_cast<std::size_t>(std::min<int>(n_keys, static_cast<int>(names.size()))));
  const auto target = rng() % names.size();
  // The facts sit together at `depth`; the asked-for one is not always first or last.
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string key = digits(rng, 5);
    if (i == target) c.answer = key;
    c.facts += "The passkey of " + names[i] + " is " + key + ".\n";
  }
  c.facts = "\n" + c.facts;
  const std::size_t at =
      cut_point(filler, static_cast<std::size_t>(depth * static_cast<double>(filler.size())));
  c.haystack_before = filler.substr(0, at);
  c.haystack_after = filler.substr(at);
  c.question = "\n\nWhat is the passkey of " + names[target] + "?";
  c.answer_prefix = "The passkey of " + names[target] + " is ";
  return c;
}

}  // namespace redknot::decoder
