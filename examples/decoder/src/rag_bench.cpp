#include "rag_bench.hpp"

#include <algorithm>

#include "redknot/error.hpp"

namespace redknot::decoder {

namespace {

const char* const kNames[] = {"Alice", "Bruno", "Chen", "Dara",  "Elif", "Farid", "Greta", "Hugo",
                              "Ines",  "Jonas", "Kira", "Luca",  "Mira", "Nils",  "Omar",  "Priya",
                              "Quinn", "Rosa",  "Sven", "Tariq", "Uma",  "Vera",  "Wanda", "Yusuf"};

const char* const kPreamble = "Answer the question using the documents below.\n\n";
const char* const kDocHeading = "Document:\n";

// Where a sentence or line ends near `at` (so the fact does not split a word).
std::size_t sentence_end(const std::string& text, std::size_t at) {
  at = std::min(at, text.size());
  const std::size_t p = text.find_first_of(".\n", at);
  return p == std::string::npos ? text.size() : p + 1;
}

}  // namespace

std::pair<std::string, std::string> chat_template_parts(const Tokenizer& tok) {
  const std::string marker = "\x01USER\x01";
  const std::string t = tok.has_chat_template() ? tok.apply_chat_template(marker) : marker;
  const std::size_t at = t.find(marker);
  return {t.substr(0, at), t.substr(at + marker.size())};
}

RagRequest rag_request_from_text(const Tokenizer& tok, const std::vector<std::string>& documents,
                                 const std::string& question, const std::string& preamble,
                                 const std::string& primer) {
  const auto [head, tail] = chat_template_parts(tok);
  RagRequest r;
  r.system = tok.encode(head + preamble);
  for (const auto& d : documents) r.documents.push_back(tok.encode(d + "\n\n", false));
  r.question = tok.encode(question + tail + primer, false);
  return r;
}

RagBench::RagBench(const Tokenizer& tok, const std::string& text, RagBenchOptions opt)
    : tok_(tok), opt_(opt) {
  require(opt.fact_docs >= 1 && opt.fact_docs <= static_cast<int>(std::size(kNames)),
          "rag bench: fact_docs=", opt.fact_docs, " must be in [1, ", std::size(kNames), "]");
  require(opt.plain_docs >= 0 && opt.doc_min >= 16 && opt.doc_max >= opt.doc_min,
          "rag bench: plain_docs >= 0 and 16 <= doc_min <= doc_max needed");
  const std::vector<std::int32_t> source = tok.encode(text, false);
  require(source.size() >= static_cast<std::size_t>(opt.doc_max), "rag bench: ", source.size(),
          " tokens of text, fewer than one document of ", opt.doc_max);
  std::mt19937 rng(opt.seed);
  std::uniform_int_distribution<int> len(opt.doc_min, opt.doc_max);
  std::uniform_int_distribution<int> digit(0, 9);
  std::uniform_real_distribution<double> depth(0.1, 0.9);
  std::size_t cursor = 0;
  const std::string fact_intro = "The access code for ";
  for (int i = 0; i < opt.fact_docs + opt.plain_docs; ++i) {
    RagDocument d;
    // The document's body: the next slice of the text (decoded back, so the document is tokenised alone),
    // shortened by the fact and heading so the whole document stays near the drawn length.
    const int want = len(rng);
    const int body = want - (i < opt.fact_docs ? 16 : 4);
    if (cursor + static_cast<std::size_t>(body) > source.size()) cursor = 0;
    std::string s =
        tok.decode(std::vector<std::int32_t>(source.begin() + static_cast<std::ptrdiff_t>(cursor),
                                             source.begin() + static_cast<std::ptrdiff_t>(cursor) + body));
    cursor += static_cast<std::size_t>(body);
    if (i < opt.fact_docs) {
      d.name = kNames[i];
      d.code += static_cast<char>('1' + digit(rng) % 9);
      for (int k = 1; k < 6; ++k) d.code += static_cast<char>('0' + digit(rng));
      const std::size_t at =
          sentence_end(s, static_cast<std::size_t>(depth(rng) * static_cast<double>(s.size())));
      s.insert(at, "\n" + fact_intro + d.name + " is " + d.code + ".\n");
    }
    d.tokens = tok.encode(kDocHeading + s + "\n\n", false);
    docs_.push_back(std::move(d));
  }
  system_ = rag_request_from_text(tok, {}, "", kPreamble).system;
}

RagCase RagBench::make_case(int length, int answer_room, int fact_doc, std::mt19937& rng) const {
  require(fact_doc >= 0 && fact_doc < opt_.fact_docs, "rag bench: fact_doc=", fact_doc, " out of range");
  RagCase c;
  c.fact_doc = fact_doc;
  c.name = docs_[static_cast<std::size_t>(fact_doc)].name;
  c.code = docs_[static_cast<std::size_t>(fact_doc)].code;
  c.request.system = system_;
  c.request.question =
      rag_request_from_text(tok_, {}, "Question: What is the access code for " + c.name + "?", "",
                            "The access code for " + c.name + " is")
          .question;
  const std::size_t fixed =
      c.request.system.size() + c.request.question.size() + static_cast<std::size_t>(answer_room);
  std::size_t budget =
      static_cast<std::size_t>(length) > fixed ? static_cast<std::size_t>(length) - fixed : 0;
  const std::size_t fact_len = docs_[static_cast<std::size_t>(fact_doc)].tokens.size();
  require(budget >= fact_len, "rag bench: a request of ", length, " tokens has no room for fact document ",
          fact_doc, " (", fact_len, " tokens)");
  budget -= fact_len;
  c.doc_ids.push_back(fact_doc);
  std::vector<int> plain;
  for (int i = opt_.fact_docs; i < static_cast<int>(docs_.size()); ++i) plain.push_back(i);
  std::shuffle(plain.begin(), plain.end(), rng);
  for (int i : plain) {
    const std::size_t n = docs_[static_cast<std::size_t>(i)].tokens.size();
    if (n <= budget) {
      c.doc_ids.push_back(i);
      budget -= n;
    }
  }
  std::shuffle(c.doc_ids.begin(), c.doc_ids.end(), rng);
  for (int i : c.doc_ids) c.request.documents.push_back(docs_[static_cast<std::size_t>(i)].tokens);
  return c;
}

}  // namespace redknot::decoder
