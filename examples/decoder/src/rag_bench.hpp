// Synthetic multi-document RAG requests from real text (redknot-rag-eval, redknot-demo --rag).
//
// A pool of documents cut from natural text found on the machine (corpus.hpp: package docs), each of a random
// length in [doc_min, doc_max] tokens; the first `fact_docs` of them carry one planted fact, "The access code
// for <name> is <6 digits>.", at a random depth (a different name in each). A request of about `length`
// tokens is [system][documents...][question]: one fact document and as many plain documents as fit, in a
// random order, so the same documents recur across requests at different offsets; the question asks for the
// fact's code and the assistant turn is primed with "The access code for <name> is" (a 135M model otherwise
// often rambles instead of answering). Every document is tokenised alone: the request's tokens are the
// concatenation, and a full prefill runs exactly those.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "rag.hpp"
#include "tokenizer.hpp"

namespace redknot::decoder {

struct RagBenchOptions {
  int fact_docs = 8;
  int plain_docs = 20;
  int doc_min = 300;   // tokens
  int doc_max = 1500;  // tokens
  std::uint32_t seed = 1;
};

struct RagDocument {
  std::vector<std::int32_t> tokens;
  std::string name, code;  // the planted fact; empty for plain documents
};

struct RagCase {
  RagRequest request;
  std::vector<int> doc_ids;  // indices into RagBench::documents(), in request order
  int fact_doc = -1;
  std::string name, code;  // the expected answer is `code`
  std::size_t tokens() const { return request.system.size() + request.question.size() + doc_tokens(); }
  std::size_t doc_tokens() const { return static_cast<std::size_t>(request.document_tokens()); }
};

// The chat template around one user message, split at the message (both empty parts without a template).
std::pair<std::string, std::string> chat_template_parts(const Tokenizer& tok);

// A request from texts: system = the template's head + `preamble`; each document tokenised alone (followed by
// a blank line); question = `question` + the template's tail + `primer` (the assistant turn's first words).
RagRequest rag_request_from_text(const Tokenizer& tok, const std::vector<std::string>& documents,
                                 const std::string& question, const std::string& preamble = "",
                                 const std::string& primer = "");

class RagBench {
 public:
  // `text`: natural text to cut the documents from (enough for every document, else it is reused).
  RagBench(const Tokenizer& tok, const std::string& text, RagBenchOptions opt = {});

  const std::vector<RagDocument>& documents() const { return docs_; }
  const std::vector<std::int32_t>& system() const { return system_; }
  // A request of at most `length` tokens with `answer_room` left for the answer, asking about fact document
  // `fact_doc`; `rng` picks the plain documents and the order.
  RagCase make_case(int length, int answer_room, int fact_doc, std::mt19937& rng) const;

 private:
  const Tokenizer& tok_;
  RagBenchOptions opt_;
  std::vector<RagDocument> docs_;
  std::vector<std::int32_t> system_;
};

}  // namespace redknot::decoder
