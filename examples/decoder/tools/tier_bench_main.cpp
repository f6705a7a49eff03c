// redknot-tier-bench: hot/cold tiers under the RAG engine of the decoder, measured on the real model.
//
// Three scenarios, all on the head-aware map and the default reuse spec (rag.hpp):
//   a. TTFT by tier: before each request every document it uses is placed in one tier: registered in the
//      store (primary), demoted to a HostTier (host), demoted to a DiskTier (disk: the file was just written,
//      so it is read from the page cache), demoted to a DiskTier and then flushed and dropped from the page
//      cache with posix_fadvise (disk_dropped: read from the device), or in no tier (cold: prefilled alone on
//      demand). TTFT runs from the request's arrival to the first answer token: TieredChunkCache::lookup for
//      every document (promotion), cold prefills, then prefill_rag. Promotion is bit-exact, so primary, host
//      and disk must give identical logits and answers: mismatches are counted.
//   b. Cycling: a store whose pool holds about a third of the documents (plus one request's room), a HostTier
//      of another third spilling its evictions into a DiskTier below (--stack plain: evictions are lost); a
//      sequence of requests where the engine pins the documents already in the store, calls make_room for
//      the request and lookup for each other document (a miss is prefilled alone). Hit rates per tier, bytes
//      moved, evictions, and TTFT split by the slowest place a request's documents came from.
//      With --remote host:port[,...] (a build with hiredis) the mode `remote` demotes the documents into a
//      RedisTier on that Redis Cluster instead: promotions are then fetched over the network; the bytes
//      fetched per request are compared with the dense payload of the same documents (fp32 K and V rows of
//      every head and position, no headers).
//   f. Faults (--faults, needs --remote): requests whose documents were demoted into the RedisTier while a
//      fault is injected with real processes: a payload SETRANGE-corrupted or truncated on its node
//      (redis-cli), an index key deleted, the master of a document's slot killed with SIGKILL mid-request
//      (brought back by scripts/redis-cluster.sh start-node), every node stopped with SIGSTOP mid-request.
//      A bad or unreachable object must be a miss (the document is prefilled again), so every answer and
//      first-token logits must equal the fault-free run's: differences are counted.
//   c. Preemption: K sequences decoding greedily round-robin in one store, each swapped out to a tier at a
//      random step and back in two rounds later; tokens and logits compared with the uninterrupted run;
//      swap-out / swap-in time and bytes (local heads' and global heads' objects apart).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "cli_args.hpp"
#include "corpus.hpp"
#include "generate.hpp"
#include "model_path.hpp"
#include "rag.hpp"
#include "rag_bench.hpp"
#include "redknot/error.hpp"
#include "redknot/kv_slice.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/tiers.hpp"
#include "session.hpp"
#include "thread_env.hpp"

#ifdef REDKNOT_HAS_REDIS
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "redknot/redis_tier.hpp"
#endif

using namespace redknot;
using namespace redknot::decoder;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void usage() {
  std::fprintf(stderr,
               "usage: redknot-tier-bench [--head-map examples/decoder/head_maps/smollm2-135m.json]\n"
               "         [--model M.gguf] [--spec global_deviation_topk:0.05:16+tail:1024] [--length 4096]\n"
               "         [--requests 12] [--tiers primary,host,disk,disk_dropped,cold] [--repeats 3]\n"
               "         [--cycle-requests 30] [--preempt 4] [--preempt-length 1024] [--preempt-new 24]\n"
               "         [--scenarios a,b,c] [--max-new 8] [--dir /tmp/redknot-tier-bench] [--fsync]\n"
               "         [--fact-docs 8] [--plain-docs 20] [--doc-min 300] [--doc-max 1500] [--seed 1]\n"
               "         [--chunk 256] [--threads N] [--json out.json] [--md out.md] [--quiet]\n"
               "         [--remote host:port[,...]] [--faults corrupt,truncate,del_index,kill_master,\n"
               "          stop_cluster|all] [--fault-rounds 1] [--cluster-script scripts/redis-cluster.sh]\n"
               "         [--cluster-base-port (lowest --remote port)]\n"
               "  --tiers may include remote (needs --remote); --faults runs scenario f after a.\n");
}

const std::set<std::string> kValued = {"head-map",
                                       "model",
                                       "spec",
                                       "length",
                                       "requests",
                                       "tiers",
                                       "repeats",
                                       "cycle-requests",
                                       "preempt",
                                       "preempt-length",
                                       "preempt-new",
                                       "scenarios",
                                       "max-new",
                                       "dir",
                                       "fact-docs",
                                       "plain-docs",
                                       "doc-min",
                                       "doc-max",
                                       "seed",
                                       "chunk",
                                       "threads",
                                       "json",
                                       "md",
                                       "stack",
                                       "remote",
                                       "faults",
                                       "fault-rounds",
                                       "cluster-script",
                                       "cluster-base-port"};
const std::set<std::string> kFlags = {"help", "quiet", "fsync"};

// Refuses options the tool does not know (a typo would otherwise run the defaults silently).
void check_options(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) continue;
    a = a.substr(2, a.find('=') == std::string::npos ? std::string::npos : a.find('=') - 2);
    require(kValued.count(a) || kFlags.count(a), "unknown option --", a, " (--help lists them)");
    if (kValued.count(a) && std::string(argv[i]).find('=') == std::string::npos) ++i;
  }
}

// An integer option in [lo, hi], or InvalidArgument naming it.
int int_arg(const CliArgs& args, const std::string& name, int fallback, int lo, int hi = 1 << 30) {
  if (!args.has(name)) return fallback;
  const std::string v = args.get(name);
  std::size_t used = 0;
  long x = 0;
  try {
    x = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  require(used == v.size() && !v.empty(), "--", name, ": '", v, "' is not an integer");
  require(x >= lo && x <= hi, "--", name, "=", x, " must be in [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Nearest-rank percentile (p in [0, 100]).
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, i == 0 ? 0 : i - 1)];
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::string now_utc() {
  const std::time_t now = std::time(nullptr);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  return b;
}

// Flushes `file` to the device and asks the kernel to drop its pages from the page cache, so the next read
// goes to the device (no root needed, unlike drop_caches: clean pages of a file may be dropped by anyone who
// can open it). Returns the fraction of its pages still resident afterwards (mincore), -1 when unknown.
double drop_from_page_cache(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat sb {};
  double resident = -1;
  if (::fdatasync(fd) == 0 && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 && ::fstat(fd, &sb) == 0 &&
      sb.st_size > 0) {
    const auto len = static_cast<std::size_t>(sb.st_size);
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
      std::vector<unsigned char> vec((len + page - 1) / page);
      if (::mincore(p, len, vec.data()) == 0) {
        std::size_t in = 0;
        for (unsigned char b : vec) in += b & 1u;
        resident = static_cast<double>(in) / static_cast<double>(vec.size());
      }
      ::munmap(p, len);
    }
  }
  ::close(fd);
  return resident;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The documents of a case without repeats (a request could name one twice), in request order.
std::vector<int> unique_docs(const RagCase& rc) {
  std::vector<int> out;
  for (int d : rc.doc_ids)
    if (std::find(out.begin(), out.end(), d) == out.end()) out.push_back(d);
  return out;
}

const std::vector<std::string> kModes = {"primary", "host", "disk", "disk_dropped", "cold", "remote"};
const std::vector<std::string> kFaults = {"corrupt", "truncate", "del_index", "kill_master", "stop_cluster"};

// "host:port" items of --remote, or InvalidArgument naming the bad one.
std::vector<std::string> parse_remote(const std::string& list) {
  std::vector<std::string> seeds = split_list(list);
  require(!seeds.empty(), "--remote: '", list, "' names no host:port");
  for (const auto& s : seeds) {
    const auto colon = s.rfind(':');
    const std::string port = colon == std::string::npos ? "" : s.substr(colon + 1);
    const bool digits = !port.empty() && port.size() <= 5 &&
                        std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    require(
        colon != std::string::npos && colon > 0 && digits && std::stoi(port) >= 1 && std::stoi(port) <= 65535,
        "--remote: '", s, "' is not host:port (port 1..65535)");
  }
  return seeds;
}

int port_of(const std::string& node) { return std::atoi(node.substr(node.rfind(':') + 1).c_str()); }

#ifdef REDKNOT_HAS_REDIS
// Single quotes for sh; the keys and scripts passed here never contain one, but be safe.
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char ch : s) out += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return out + "'";
}

// Runs `cmd` through sh (a real process: redis-cli, the cluster script), bounded by `timeout`; returns its
// exit status and fills `output` with what it printed on stdout (trailing newlines removed).
int run_process(const std::string& cmd, std::string* output = nullptr) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::string text;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, n);
  const int st = ::pclose(p);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (output != nullptr) *output = text;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// redis-cli against one node ("host:port"), 10 s at most.
int redis_cli(const std::string& node, const std::vector<std::string>& argv, std::string* output = nullptr) {
  std::string cmd = "timeout 10 redis-cli -h " + shell_quote(node.substr(0, node.rfind(':'))) + " -p " +
                    std::to_string(port_of(node));
  for (const auto& a : argv) {
    cmd += ' ';  // appended apart: GCC 12 warns (-Wrestrict, a false positive) on " " + std::string&&
    cmd += shell_quote(a);
  }
  return run_process(cmd + " 2>&1", output);
}

// The pid of our redis-server on `port` from scripts/redis-cluster.sh's pid file, 0 when there is none or
// it is not a live redis-server (never signal a reused pid).
pid_t node_pid(const fs::path& cluster_dir, int port) {
  pid_t pid = 0;
  std::ifstream(cluster_dir / ("node-" + std::to_string(port) + ".pid")) >> pid;
  if (pid <= 0) return 0;
  std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
  std::stringstream ss;
  ss << cmd.rdbuf();
  return ss.str().find("redis-server") != std::string::npos ? pid : 0;
}
#endif
// Where a request's documents came from in the cycling workload: the slowest source among them.
const std::vector<std::string> kSources = {"store", "host", "disk", "miss"};

}  // namespace

int main(int argc, char** argv) {
  settle_thread_env(argv);
  try {
    check_options(argc, argv);
    const CliArgs args(argc, argv, kFlags);
    if (args.has("help")) {
      usage();
      return 0;
    }
    const bool quiet = args.has("quiet");
    const std::string model_path = args.has("model") ? args.get("model") : default_model_path();
    const LoadedModel loaded = load_model(model_path);
    const LlamaModel& model = loaded.model;
    const Tokenizer& tok = loaded.tokenizer;
    const LlamaConfig& c = model.config();
// Progress on stderr unless --quiet (a macro: the format strings stay literals the compiler checks).
#define LOG(...)                                   \
  do {                                             \
    if (!quiet) std::fprintf(stderr, __VA_ARGS__); \
  } while (0)

    const std::string map_path = args.get("head-map", "examples/decoder/head_maps/smollm2-135m.json");
    require(fs::exists(map_path), "--head-map: ", map_path,
            " does not exist (run from the repository root or pass the path)");
    const HeadMap map = head_map_for("redknot", map_path, c);
    const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
    const RecomputeSpec spec = parse_recompute_spec(args.get("spec", kDefaultRecomputeSpec));
    const int page_size = 16;
    SessionOptions so;
    so.chunk = int_arg(args, "chunk", 256, 1);
    so.threads = int_arg(args, "threads", 0, 0, 1024);
    so.page_size = page_size;
    so.max_context = c.context_length > 0 ? c.context_length : 8192;
    const int length = int_arg(args, "length", 4096, 256, so.max_context);
    const int n_requests = int_arg(args, "requests", 12, 1);
    const int repeats = int_arg(args, "repeats", 3, 1);
    const int cycle_requests = int_arg(args, "cycle-requests", 30, 1);
    const int n_preempt = int_arg(args, "preempt", 4, 1, 64);
    const int preempt_length = int_arg(args, "preempt-length", 1024, 64, so.max_context);
    const int preempt_new = int_arg(args, "preempt-new", 24, 4, 4096);
    const int max_new = int_arg(args, "max-new", 8, 1, 4096);
    require(length + max_new <= so.max_context, "--length=", length, " plus --max-new=", max_new,
            " exceed the model's context ", so.max_context);
    require(preempt_length + preempt_new <= so.max_context, "--preempt-length plus --preempt-new exceed ",
            so.max_context);
    std::vector<std::string> modes = split_list(args.get("tiers", "primary,host,disk,disk_dropped,cold"));
    for (const auto& m : modes)
      require(std::find(kModes.begin(), kModes.end(), m) != kModes.end(), "--tiers: '", m,
              "' is not one of primary, host, disk, disk_dropped, cold, remote");
    require(!modes.empty() && modes[0] == "primary",
            "--tiers must start with primary (the reference of the answer and logit checks)");
    std::set<std::string> scenarios;
    for (const auto& s : split_list(args.get("scenarios", "a,b,c"))) {
      require(s == "a" || s == "b" || s == "c", "--scenarios: '", s, "' is not one of a, b, c");
      scenarios.insert(s);
    }
    const std::vector<std::string> remote_seeds =
        args.has("remote") ? parse_remote(args.get("remote")) : std::vector<std::string>{};
#ifndef REDKNOT_HAS_REDIS
    require(remote_seeds.empty(),
            "--remote: this build has no Redis support (hiredis was not found when it was ",
            "configured: apt-get install libhiredis-dev, then configure again)");
#endif
    const bool want_remote = std::find(modes.begin(), modes.end(), "remote") != modes.end();
    require(!want_remote || !remote_seeds.empty(),
            "--tiers: remote needs --remote host:port[,...] (a node of the Redis Cluster)");
    std::vector<std::string> faults;
    if (args.has("faults")) {
      require(!remote_seeds.empty(), "--faults needs --remote host:port[,...]");
      faults = split_list(args.get("faults"));
      if (faults.size() == 1 && faults[0] == "all") faults = kFaults;
      require(!faults.empty(), "--faults: '", args.get("faults"), "' names no fault");
      for (const auto& f : faults)
        require(std::find(kFaults.begin(), kFaults.end(), f) != kFaults.end(), "--faults: '", f,
                "' is not one of corrupt, truncate, del_index, kill_master, stop_cluster, all");
    }
    const int fault_rounds = int_arg(args, "fault-rounds", 1, 1, 100);
    const std::string cluster_script = args.get("cluster-script", "scripts/redis-cluster.sh");
    int lowest_port = 65535;
    for (const auto& sd : remote_seeds) lowest_port = std::min(lowest_port, port_of(sd));
    const int cluster_base = int_arg(args, "cluster-base-port", lowest_port, 1024, 55530);
    const bool need_script = std::find(faults.begin(), faults.end(), "kill_master") != faults.end() ||
                             std::find(faults.begin(), faults.end(), "stop_cluster") != faults.end();
    require(!need_script || fs::exists(cluster_script), "--cluster-script: ", cluster_script,
            " does not exist (run from the repository root or pass the path)");
    const bool fsync = args.has("fsync");
    const std::string stack = args.get("stack", "spill");
    require(stack == "spill" || stack == "plain", "--stack: '", stack, "' is not one of spill, plain");
    const fs::path dir = args.get("dir", "/tmp/redknot-tier-bench");
    {
      std::error_code ec;
      fs::remove_all(dir, ec);  // objects of an earlier run would be adopted by the DiskTiers
      require<Unavailable>(!ec, "--dir: cannot clear ", dir.string(), ": ", ec.message());
    }

    RagBenchOptions bo;
    bo.fact_docs = int_arg(args, "fact-docs", 8, 1);
    bo.plain_docs = int_arg(args, "plain-docs", 20, 0);
    bo.doc_min = int_arg(args, "doc-min", 300, 16);
    bo.doc_max = int_arg(args, "doc-max", 1500, bo.doc_min);
    bo.seed = static_cast<std::uint32_t>(int_arg(args, "seed", 1, 0));
    const std::size_t text_chars = static_cast<std::size_t>(bo.fact_docs + bo.plain_docs) * bo.doc_max * 6;
    const RagBench bench(tok, concat_files(evaluation_files(), 0, text_chars), bo);
    const auto& docs = bench.documents();
    std::int64_t doc_tokens_total = 0;
    for (const auto& d : docs) doc_tokens_total += static_cast<std::int64_t>(d.tokens.size());

    const std::uint64_t model_fp = model_fingerprint(model_path);
    const std::int64_t heads = static_cast<std::int64_t>(c.n_layers) * c.n_kv_heads;
    const auto is_end = [&](std::int32_t t) { return tok.is_end_of_generation(t); };
    const auto text_of = [&](std::vector<std::int32_t> t) {
      if (!t.empty() && tok.is_end_of_generation(t.back())) t.pop_back();
      return tok.decode(t);
    };
    // The pages a request may take besides its spliced documents: copy-on-write copies of recomputed pages
    // (up to every page of its documents) and its own tokens; the dense peak bounds both.
    const std::int64_t request_room = peak_sequence_pages(dense, page_size, length + max_new, so.chunk);

    json out;
    out["model"] = model_path;
    out["head_map"] = map_path;
    out["spec"] = recompute_spec_name(spec);
    out["date"] = now_utc();
    out["load_start"] = load_average();
    out["options"] = {{"length", length},
                      {"requests", n_requests},
                      {"repeats", repeats},
                      {"tiers", modes},
                      {"cycle_requests", cycle_requests},
                      {"preempt", n_preempt},
                      {"preempt_length", preempt_length},
                      {"preempt_new", preempt_new},
                      {"max_new", max_new},
                      {"dir", dir.string()},
                      {"fsync", fsync},
                      {"stack", stack},
                      {"chunk", so.chunk},
                      {"threads", so.threads},
                      {"fact_docs", bo.fact_docs},
                      {"plain_docs", bo.plain_docs},
                      {"doc_min", bo.doc_min},
                      {"doc_max", bo.doc_max},
                      {"seed", bo.seed},
                      {"remote", remote_seeds},
                      {"faults", faults},
                      {"fault_rounds", fault_rounds},
                      {"cluster_base_port", cluster_base}};
    LOG("load average at start: %s\n", load_average().c_str());
    const auto write_json = [&] {
      if (args.has("json")) std::ofstream(args.get("json")) << out.dump(2) << "\n";
    };

    // ---- the documents, prefilled alone into a store that holds all of them (scenario a's; its page counts
    // size scenario b)
    const std::int64_t pages_a =
        heads * (doc_tokens_total / page_size + static_cast<std::int64_t>(docs.size())) + 2 * request_room;
    auto store_a = Session::make_store(model, map, page_size, pages_a);
    DocumentCache cache_a(model, store_a, model_path, so);
    const auto page_bytes = static_cast<std::int64_t>(store_a->pool().page_bytes());
    LOG("prefilling %zu documents (%lld tokens) alone...\n", docs.size(),
        static_cast<long long>(doc_tokens_total));
    std::vector<std::int64_t> doc_pages;
    std::vector<double> doc_prefill_s;
    std::int64_t doc_pages_total = 0;
    for (const auto& d : docs) {
      doc_prefill_s.push_back(cache_a.add(d.tokens));
      std::int64_t pages = 0;
      const ChunkKey k = cache_a.key(d.tokens);
      for (int l = 0; l < c.n_layers; ++l)
        for (int h = 0; h < c.n_kv_heads; ++h) pages += store_a->chunk_table(k, l, h).num_pages();
      doc_pages.push_back(pages);
      doc_pages_total += pages;
    }
    double per_1k = 0;
    for (std::size_t i = 0; i < docs.size(); ++i)
      per_1k += doc_prefill_s[i] / static_cast<double>(docs[i].tokens.size()) * 1000.0;
    out["documents"] = {{"count", docs.size()},
                        {"tokens", doc_tokens_total},
                        {"kv_bytes", doc_pages_total * page_bytes},
                        {"prefill_s_total", std::accumulate(doc_prefill_s.begin(), doc_prefill_s.end(), 0.0)},
                        {"prefill_s_per_1k_tokens_mean", per_1k / static_cast<double>(docs.size())}};
    const auto doc_key = [&](int d) { return cache_a.key(docs[static_cast<std::size_t>(d)].tokens); };
    // What a request's documents would take as a dense payload: fp32 K and V rows of every (layer, kv_head)
    // at every position, no headers. The yardstick for the bytes a remote fetch moves.
    const auto dense_bytes_of = [&](const std::vector<int>& ids) {
      std::int64_t n = 0;
      for (int d : ids) n += static_cast<std::int64_t>(docs[static_cast<std::size_t>(d)].tokens.size());
      return n * heads * c.head_dim * 2 * static_cast<std::int64_t>(sizeof(float));
    };

    // ---- the remote tier: a RedisTier on the cluster named by --remote (scenarios a's `remote` and f)
    KvTier* remote_tier = nullptr;
#ifdef REDKNOT_HAS_REDIS
    std::unique_ptr<RedisClusterClient> redis;
    std::unique_ptr<RedisTier> remote;
    if (!remote_seeds.empty()) {
      RedisClusterOptions ro;
      ro.seeds = remote_seeds;
      // The fault test's bounds (docs/remote_tier.md): a call gives up within about 3 s + one command
      // timeout, so a stopped cluster costs a request seconds per document, not minutes.
      ro.connect_timeout = std::chrono::milliseconds(500);
      ro.command_timeout = std::chrono::milliseconds(1500);
      ro.request_deadline = std::chrono::milliseconds(3000);
      redis = std::make_unique<RedisClusterClient>(ro);
      require<Unavailable>(redis->refresh_slots(), "--remote: no Redis Cluster node answers at ",
                           args.get("remote"), " (scripts/redis-cluster.sh up --base-port N starts one)");
      RedisTierOptions to;
      to.prefix = "rk-tier-bench-" + std::to_string(::getpid());  // a run's own namespace
      remote = std::make_unique<RedisTier>(*redis, to);
      remote_tier = remote.get();
    }
#endif
    const auto remote_stats = [&] { return remote_tier != nullptr ? remote_tier->stats() : TierStats{}; };

    // ---- a. TTFT by tier
    std::ostringstream md;
    md << "Machine load average at start: " << out["load_start"].get<std::string>() << "\n";
    if (scenarios.count("a")) {
      HostTier host(std::int64_t{1} << 40);  // holds whatever one request needs; capacity is b's concern
      DiskTier disk(dir / "a", std::int64_t{1} << 40, true, fsync);
      std::vector<KvTier*> below = {&host, &disk};
      if (remote_tier != nullptr) below.push_back(remote_tier);  // the slowest last, as an engine would
      TieredChunkCache<float> engine(*store_a, model_fp, below);
      TieredChunkCache<float> to_host(*store_a, model_fp, {&host});
      TieredChunkCache<float> to_disk(*store_a, model_fp, {&disk});
      std::unique_ptr<TieredChunkCache<float>> to_remote;
      if (remote_tier != nullptr)
        to_remote =
            std::make_unique<TieredChunkCache<float>>(*store_a, model_fp, std::vector<KvTier*>{remote_tier});
      std::mt19937 rng(bo.seed * 7919u + static_cast<std::uint32_t>(length));
      struct Run {
        double ttft = 0, promote = 0, cold = 0, system = 0, splice = 0, select = 0, recompute = 0,
               question = 0;
        std::int64_t bytes_up = 0;
        std::int64_t remote_read = 0;  // remote: bytes the RedisTier read (its envelopes included)
        double read_wait = 0;  // of promote: waiting for tier reads (the rest: checks, decode, import)
        double resident = -1;  // disk_dropped: fraction of the objects' pages still cached before the read
      };
      std::map<std::string, std::vector<std::vector<Run>>> runs;  // mode -> request -> repeats
      std::map<std::string, int> answer_mismatch, logit_mismatch;
      json jreq = json::array();
      for (int r = 0; r < n_requests; ++r) {
        const RagCase rc = bench.make_case(length, max_new, r % bo.fact_docs, rng);
        const std::vector<int> ids = unique_docs(rc);
        std::vector<float> ref_logits;
        std::vector<std::int32_t> ref_answer;
        json jr = {{"tokens", rc.tokens()},
                   {"doc_tokens", rc.doc_tokens()},
                   {"docs", rc.doc_ids},
                   {"dense_bytes", dense_bytes_of(ids)}};
        for (const auto& m : modes) runs[m].emplace_back();
        for (int rep = 0; rep < repeats; ++rep) {
          for (const auto& mode : modes) {
            // Place the documents (not timed): back in the store from wherever they are, then down.
            Run run;
            double resident_sum = 0;
            int resident_n = 0;
            for (int d : ids) {
              const ChunkKey k = doc_key(d);
              if (!store_a->has_chunk(k) && !engine.lookup(k))
                cache_a.add(docs[static_cast<std::size_t>(d)].tokens);
              if (mode == "host") {
                require<Unavailable>(to_host.demote(k), "scenario a: the host tier refused a document");
              } else if (mode == "disk" || mode == "disk_dropped") {
                require<Unavailable>(to_disk.demote(k), "scenario a: the disk tier refused a document");
                if (mode == "disk_dropped") {
                  const double res =
                      drop_from_page_cache(disk.path_of(TieredChunkCache<float>::object_name(k)));
                  if (res >= 0) resident_sum += res, ++resident_n;
                }
              } else if (mode == "remote") {
                require<Unavailable>(to_remote->demote(k),
                                     "scenario a: the remote tier refused a document (is the cluster up? "
                                     "maxmemory: scripts/redis-cluster.sh)");
              } else if (mode == "cold") {
                store_a->drop_chunk(k);
              }
            }
            if (resident_n > 0) run.resident = resident_sum / resident_n;
            // The request arrives.
            const ChunkTierStats st0 = engine.stats();
            const TierStats rs0 = remote_stats();
            const auto t0 = Clock::now();
            for (int d : ids) {
              const auto t = Clock::now();
              const bool found = engine.lookup(doc_key(d)).has_value();
              run.promote += since(t);
              if (!found) run.cold += cache_a.add(docs[static_cast<std::size_t>(d)].tokens);
            }
            Session s(model, store_a, so);
            const RagResult rr = prefill_rag(s, cache_a, rc.request, spec);
            run.ttft = since(t0);
            run.bytes_up = engine.stats().bytes_up - st0.bytes_up;
            run.remote_read = remote_stats().bytes_read - rs0.bytes_read;
            run.read_wait = static_cast<double>(engine.stats().read_wait_ns - st0.read_wait_ns) * 1e-9;
            run.system = rr.system_s;
            run.splice = rr.splice_s;
            run.select = rr.select_s;
            run.recompute = rr.recompute_s;
            run.question = rr.question_s;
            if (rep == 0) {
              const std::vector<std::int32_t> answer = greedy_answer(s, rr.logits, max_new, is_end);
              if (mode == "primary") {
                ref_logits = rr.logits;
                ref_answer = answer;
                jr["answer"] = text_of(answer);
                jr["correct"] = text_of(answer).find(rc.code) != std::string::npos;
              } else if (answer != ref_answer) {
                ++answer_mismatch[mode];
                std::fprintf(stderr, "ANSWER MISMATCH request %d, %s: '%s' vs primary '%s'\n", r,
                             mode.c_str(), text_of(answer).c_str(), text_of(ref_answer).c_str());
              }
            }
            if (!same_bits(rr.logits, ref_logits)) {
              ++logit_mismatch[mode];
              std::fprintf(stderr, "LOGITS DIFFER request %d repeat %d, %s vs primary\n", r, rep,
                           mode.c_str());
            }
            jr["runs"][mode].push_back({{"ttft_s", run.ttft},
                                        {"promote_s", run.promote},
                                        {"read_wait_s", run.read_wait},
                                        {"cold_prefill_s", run.cold},
                                        {"bytes_up", run.bytes_up},
                                        {"remote_bytes_read", run.remote_read},
                                        {"resident_fraction", run.resident}});
            LOG("[a %d/%d rep %d] %-12s TTFT %6.2f s  promote %6.3f s  cold %5.2f s  up %6.1f MiB%s\n", r + 1,
                n_requests, rep + 1, mode.c_str(), run.ttft, run.promote, run.cold, run.bytes_up / 1048576.0,
                run.resident >= 0 ? (" resident " + std::to_string(run.resident)).c_str() : "");
            runs[mode].back().push_back(run);
          }
        }
        jreq.push_back(jr);
        // The summary after every request, so that a run cut short still has one.
        json js;
        for (const auto& mode : modes) {
          std::vector<double> ttft, promote, wait, cold, up, sys, splice, select, recompute, question,
              resident, ratio, remote_read, dense;
          for (const auto& per_req : runs[mode]) {
            std::vector<double> t, p, w, cl, sy, sp, se, rc2, q;
            for (const Run& x : per_req) {
              t.push_back(x.ttft);
              p.push_back(x.promote);
              w.push_back(x.read_wait);
              cl.push_back(x.cold);
              sy.push_back(x.system);
              sp.push_back(x.splice);
              se.push_back(x.select);
              rc2.push_back(x.recompute);
              q.push_back(x.question);
              if (x.resident >= 0) resident.push_back(x.resident);
            }
            ttft.push_back(median(t));
            promote.push_back(median(p));
            wait.push_back(median(w));
            cold.push_back(median(cl));
            sys.push_back(median(sy));
            splice.push_back(median(sp));
            select.push_back(median(se));
            recompute.push_back(median(rc2));
            question.push_back(median(q));
            up.push_back(static_cast<double>(per_req.front().bytes_up));
            remote_read.push_back(static_cast<double>(per_req.front().remote_read));
            // jreq holds every request so far, in the order of runs[mode].
            const double dense_b = jreq[ratio.size()]["dense_bytes"].get<double>();
            dense.push_back(dense_b);
            ratio.push_back(static_cast<double>(per_req.front().bytes_up) / dense_b);
          }
          js[mode] = {{"requests", ttft.size()},
                      {"ttft_median_s", median(ttft)},
                      {"ttft_min_s", *std::min_element(ttft.begin(), ttft.end())},
                      {"ttft_max_s", *std::max_element(ttft.begin(), ttft.end())},
                      {"ttft_per_request_s", ttft},
                      {"promote_median_s", median(promote)},
                      {"read_wait_median_s", median(wait)},
                      {"cold_prefill_median_s", median(cold)},
                      {"bytes_up_median", median(up)},
                      {"bytes_up_total", std::accumulate(up.begin(), up.end(), 0.0)},
                      {"remote_bytes_read_median", median(remote_read)},
                      {"dense_bytes_median", median(dense)},
                      {"bytes_up_over_dense_median", median(ratio)},
                      {"bytes_up_over_dense_per_request", ratio},
                      {"system_median_s", median(sys)},
                      {"splice_median_s", median(splice)},
                      {"select_median_s", median(select)},
                      {"recompute_median_s", median(recompute)},
                      {"question_median_s", median(question)},
                      {"answer_mismatches", answer_mismatch[mode]},
                      {"logit_mismatches", logit_mismatch[mode]},
                      {"resident_fraction_mean", resident.empty() ? -1.0 : median(resident)}};
        }
        out["a"] = {{"requests", jreq},
                    {"summary", js},
                    {"host", {{"get_ns", host.stats().get_ns}, {"bytes_read", host.stats().bytes_read}}},
                    {"disk", {{"get_ns", disk.stats().get_ns}, {"bytes_read", disk.stats().bytes_read}}},
                    {"remote",
                     {{"get_ns", remote_stats().get_ns},
                      {"bytes_read", remote_stats().bytes_read},
                      {"bytes_written", remote_stats().bytes_written},
                      {"misses", remote_stats().misses},
                      {"corrupt", remote_stats().corrupt},
                      {"put_failures", remote_stats().put_failures}}}};
        write_json();
      }
      md << "\n**a. TTFT by tier** (" << n_requests << " requests of " << length << " tokens, " << repeats
         << " repeats each, medians; spec " << recompute_spec_name(spec) << ")\n\n"
         << "| documents in | TTFT (median) | TTFT (min-max) | promotion (median) | of which reading | cold "
            "prefills (median) | moved up per request (median) | answers differing from primary | logits "
            "differing from primary's first run | moved up / dense payload |\n"
         << "|---|---|---|---|---|---|---|---|---|---|\n";
      for (const auto& mode : modes) {
        const auto& s = out["a"]["summary"][mode];
        char answers[32] = "reference";
        if (mode != "primary")
          std::snprintf(answers, sizeof answers, "%d / %d", s["answer_mismatches"].get<int>(), n_requests);
        char b[512];
        std::snprintf(
            b, sizeof b,
            "| %s | %.2f s | %.2f-%.2f s | %.3f s | %.3f s | %.2f s | %.1f MiB | %s | %d / %d | %.3f |\n",
            mode.c_str(), s["ttft_median_s"].get<double>(), s["ttft_min_s"].get<double>(),
            s["ttft_max_s"].get<double>(), s["promote_median_s"].get<double>(),
            s["read_wait_median_s"].get<double>(), s["cold_prefill_median_s"].get<double>(),
            s["bytes_up_median"].get<double>() / 1048576.0, answers, s["logit_mismatches"].get<int>(),
            n_requests * repeats, s["bytes_up_over_dense_median"].get<double>());
        md << b;
      }
      if (want_remote) {
        const auto& r = out["a"]["summary"]["remote"];
        char b[256];
        std::snprintf(b, sizeof b,
                      "\nremote: fetched %.1f MiB per request (median; the RedisTier read %.1f MiB with its "
                      "envelopes) against a dense payload of %.1f MiB (fp32 K+V, every head and position).\n",
                      r["bytes_up_median"].get<double>() / 1048576.0,
                      r["remote_bytes_read_median"].get<double>() / 1048576.0,
                      r["dense_bytes_median"].get<double>() / 1048576.0);
        md << b;
      }
      md << "\nWhere the warm time goes (medians, s): ";
      for (const auto& mode : modes) {
        const auto& s = out["a"]["summary"][mode];
        char b[256];
        std::snprintf(b, sizeof b,
                      "%s: system %.2f, splice %.3f, select %.2f, recompute %.2f, question %.2f; ",
                      mode.c_str(), s["system_median_s"].get<double>(), s["splice_median_s"].get<double>(),
                      s["select_median_s"].get<double>(), s["recompute_median_s"].get<double>(),
                      s["question_median_s"].get<double>());
        md << b;
      }
      md << "\n";
      if (out["a"]["summary"].contains("disk_dropped"))
        md << "\ndisk_dropped: objects' pages still in the page cache after fdatasync + POSIX_FADV_DONTNEED "
              "(mincore, median): "
           << out["a"]["summary"]["disk_dropped"]["resident_fraction_mean"].get<double>() << "\n";
    }

    // ---- f. faults on the remote tier
#ifdef REDKNOT_HAS_REDIS
    if (!faults.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      const fs::path cluster_dir = fs::path(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") /
                                   ("redknot-redis-cluster-" + std::to_string(cluster_base));
      const auto script = [&](const std::string& verb, bool quiet_out) {
        return run_process("timeout 120 bash " + shell_quote(cluster_script) + " " + verb + " --base-port " +
                           std::to_string(cluster_base) + (quiet_out ? " >/dev/null 2>&1" : " >&2"));
      };
      // Seconds until the script reports every node answering and the cluster ok (bounded), -1 if never.
      const auto wait_cluster_ok = [&](double limit_s) {
        const auto t = Clock::now();
        for (int i = 0; i < 1000 && since(t) < limit_s; ++i) {
          if (script("status", true) == 0) return since(t);
          std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
        return -1.0;
      };
      TieredChunkCache<float> engine(*store_a, model_fp, {remote_tier});
      std::mt19937 rng(bo.seed * 31337u + static_cast<std::uint32_t>(length));
      json jf = json::array();
      int injected_total = 0, served = 0, answers_differ = 0, logits_differ = 0, n = 0;
      md << "\n**f. Faults on the remote tier** (" << length
         << "-token requests whose documents were demoted "
         << "into the RedisTier; the fault-free reference is the same request from the store)\n\n"
         << "| fault | target | injected | documents | from Redis | prefilled again | rejected (corrupt) | "
            "lookups | TTFT | answer differs | logits differ | replica took over after | all 6 nodes ok "
            "after |\n"
         << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
      for (int round = 0; round < fault_rounds; ++round) {
        for (const std::string& kind : faults) {
          // A healthy cluster before each fault (the previous one may still be recovering).
          if (wait_cluster_ok(60) < 0) {
            script("up", false);
            require<Unavailable>(wait_cluster_ok(60) >= 0, "scenario f: the Redis Cluster at base port ",
                                 cluster_base, " is not ok (scripts/redis-cluster.sh status)");
          }
          redis->refresh_slots();
          const RagCase rc = bench.make_case(length, max_new, n % bo.fact_docs, rng);
          ++n;
          const std::vector<int> ids = unique_docs(rc);
          // The fault-free run: every document in the store.
          for (int d : ids)
            if (!store_a->has_chunk(doc_key(d))) cache_a.add(docs[static_cast<std::size_t>(d)].tokens);
          std::vector<float> ref_logits;
          std::vector<std::int32_t> ref_answer;
          {
            Session s0(model, store_a, so);
            const RagResult r0 = prefill_rag(s0, cache_a, rc.request, spec);
            ref_logits = r0.logits;
            ref_answer = greedy_answer(s0, r0.logits, max_new, is_end);
          }
          for (int d : ids)
            require<Unavailable>(engine.demote(doc_key(d)), "scenario f: the remote tier refused a document");
          // Every write on a replica before the fault, so that a promoted replica holds the objects (the
          // fault tests the failover, not writes lost with a master). Bounded.
          int replicated = 0;
          const std::vector<std::string> masters = redis->masters();
          for (const std::string& m : masters) {
            RedisReply w;
            for (int i = 0; i < 10 && !(w.type == RedisReply::Type::kInteger && w.integer >= 1); ++i)
              w = redis->command_at(m, {"WAIT", "1", "2000"});
            replicated += w.type == RedisReply::Type::kInteger && w.integer >= 1;
          }
          // The target is the document looked up last, so that a fault injected while the first ones are
          // read lands before its read.
          const std::string name = TieredChunkCache<float>::object_name(doc_key(ids.back()));
          const std::string ikey = remote->index_key(name);
          const std::string pkey = remote->payload_key(name);
          const std::string node = redis->node_of_slot(redis_key_slot(ikey));
          std::atomic<bool> injected{false};
          std::atomic<int> lookups{0};
          std::atomic<bool> request_done{false};
          std::atomic<double> injected_at{-1.0};
          std::atomic<double> failover_s{-1.0};  // kill_master: until another node owns the victim's slot
          std::string new_owner;                 // written by the injector thread, read after its join
          std::string detail;
          std::vector<pid_t> pids;
          const auto t0 = Clock::now();
          if (kind == "corrupt" || kind == "truncate") {
            std::string len_s, o;
            redis_cli(node, {"STRLEN", pkey}, &len_s);
            const long len = std::atol(len_s.c_str());
            if (kind == "corrupt") {
              // 8 bytes in the middle of the payload (K/V rows): only the checksums can tell.
              const int st = redis_cli(node, {"SETRANGE", pkey, std::to_string(len / 2), "CORRUPT!"}, &o);
              injected = st == 0 && len > 16 && o == std::to_string(len);
              detail = "SETRANGE " + pkey + " " + std::to_string(len / 2) + " on " + node;
            } else {
              const int st = redis_cli(node,
                                       {"EVAL",
                                        "local v = redis.call('GET', KEYS[1]); redis.call('SET', KEYS[1], "
                                        "string.sub(v, 1, math.floor(#v / 2))); return #v",
                                        "1", pkey},
                                       &o);
              std::string after;
              redis_cli(node, {"STRLEN", pkey}, &after);
              injected = st == 0 && len > 0 && std::atol(after.c_str()) == len / 2;
              detail =
                  "truncated " + pkey + " from " + std::to_string(len) + " to " + after + " bytes on " + node;
            }
          } else if (kind == "del_index") {
            std::string o;
            const int st = redis_cli(node, {"DEL", ikey}, &o);
            injected = st == 0 && o == "1";
            detail = "DEL " + ikey + " on " + node;
          } else if (kind == "kill_master") {
            const pid_t pid = node_pid(cluster_dir, port_of(node));
            require<Unavailable>(pid > 0, "scenario f: no live redis-server pid for ", node, " in ",
                                 cluster_dir.string(), " (--cluster-base-port ", cluster_base, "?)");
            pids.push_back(pid);
            detail = "kill -9 of master " + node + " (pid " + std::to_string(pid) + ")";
          } else {  // stop_cluster
            for (int i = 0; i < 6; ++i)
              if (const pid_t p = node_pid(cluster_dir, cluster_base + i); p > 0) pids.push_back(p);
            require<Unavailable>(!pids.empty(), "scenario f: no live redis-server pid in ",
                                 cluster_dir.string(), " (--cluster-base-port ", cluster_base, "?)");
            detail = "SIGSTOP of " + std::to_string(pids.size()) + " nodes";
          }
          // Process faults land mid-request: 20 ms into the second document's lookup (bounded wait).
          std::thread injector;
          // Whatever happens to the request (an exception included), the injector is joined and stopped
          // nodes are resumed: a run must not leave the cluster frozen behind it.
          struct Release {
            std::atomic<bool>& done;
            std::thread& thread;
            const std::vector<pid_t>& stopped;
            bool resume;
            void operator()() {
              done = true;
              if (thread.joinable()) thread.join();
              if (resume)
                for (const pid_t p : stopped) ::kill(p, SIGCONT);
              resume = false;
            }
            ~Release() { (*this)(); }
          } release{request_done, injector, pids, kind == "stop_cluster"};
          if (kind == "kill_master" || kind == "stop_cluster") {
            const int at = ids.size() > 1 ? 2 : 1;
            injector = std::thread([&, at] {
              for (int i = 0; i < 120000 && lookups < at && !request_done; ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
              if (request_done) return;
              std::this_thread::sleep_for(std::chrono::milliseconds(20));
              for (const pid_t p : pids) ::kill(p, kind == "kill_master" ? SIGKILL : SIGSTOP);
              injected_at = since(t0);
              injected = true;
              if (kind != "kill_master") return;
              // The failover, seen from another master's slot map: the victim's slot owned by another node
              // (its replica, promoted). Polled from the kill on, bounded (60 s), with a client of its own.
              std::string other;
              for (const std::string& m : masters)
                if (m != node) other = m;
              RedisClusterOptions po;
              po.seeds = {other};
              po.connect_timeout = std::chrono::milliseconds(300);
              po.command_timeout = std::chrono::milliseconds(500);
              po.request_deadline = std::chrono::milliseconds(1000);
              RedisClusterClient probe(po);
              const int slot = redis_key_slot(ikey);
              for (int i = 0; i < 600 && since(t0) - injected_at.load() < 60; ++i) {
                if (probe.refresh_slots()) {
                  const std::string owner = probe.node_of_slot(slot);
                  if (!owner.empty() && owner != node) {
                    failover_s = since(t0) - injected_at.load();
                    new_owner = owner;
                    return;
                  }
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
              }
            });
          }
          // The request.
          const ChunkTierStats e0 = engine.stats();
          const TierStats r0 = remote->stats();
          const RedisClientStats c0 = redis->stats();
          const auto t_req = Clock::now();
          int misses = 0;
          double cold = 0, lookup_s = 0;
          for (int d : ids) {
            ++lookups;
            const auto tl = Clock::now();
            const bool found = engine.lookup(doc_key(d)).has_value();
            lookup_s += since(tl);
            if (!found) {
              ++misses;
              cold += cache_a.add(docs[static_cast<std::size_t>(d)].tokens);
            }
          }
          Session s(model, store_a, so);
          const RagResult rr = prefill_rag(s, cache_a, rc.request, spec);
          const double ttft = since(t_req);
          release();
          const std::vector<std::int32_t> answer = greedy_answer(s, rr.logits, max_new, is_end);
          ++served;
          // Back to a healthy cluster: the killed master restarted (it rejoins as a replica).
          // kill_master: from `start-node` of the killed node (it rejoins as a replica); stop_cluster: from
          // SIGCONT; until the script reports all 6 nodes answering and the cluster ok.
          double recover_s = -1;
          if (kind == "kill_master" && injected) {
            const auto t_back = Clock::now();
            script("start-node " + std::to_string(port_of(node) - cluster_base), false);
            if (wait_cluster_ok(90) >= 0) recover_s = since(t_back);
          } else if (kind == "stop_cluster" && injected) {
            recover_s = wait_cluster_ok(90);  // SIGCONT was sent just before
          }
          const ChunkTierStats e1 = engine.stats();
          const TierStats r1 = remote->stats();
          const RedisClientStats c1 = redis->stats();
          // What is left in the tier (documents that missed were prefilled into the store again).
          for (int d : ids) remote->remove(TieredChunkCache<float>::object_name(doc_key(d)));
          // A payload whose index was deleted is invisible to the tier (remove() finds payloads through the
          // index): it stays on its node until maxmemory's LRU or a TTL takes it. Measured, then deleted
          // here.
          long orphan_bytes = 0;
          if (kind == "del_index") {
            std::string len_s, o;
            redis_cli(redis->node_of_slot(redis_key_slot(pkey)), {"STRLEN", pkey}, &len_s);
            orphan_bytes = std::atol(len_s.c_str());
            redis_cli(redis->node_of_slot(redis_key_slot(pkey)), {"DEL", pkey}, &o);
          }
          const bool answer_same = answer == ref_answer;
          const bool logits_same = same_bits(rr.logits, ref_logits);
          injected_total += injected;
          answers_differ += !answer_same;
          logits_differ += !logits_same;
          if (!answer_same || !logits_same)
            std::fprintf(stderr, "FAULT %s: answer %s, logits %s vs the fault-free run\n", kind.c_str(),
                         answer_same ? "same" : "DIFFERS", logits_same ? "same" : "DIFFER");
          const std::int64_t rejected = (e1.rejected - e0.rejected) + (r1.corrupt - r0.corrupt);
          jf.push_back({{"fault", kind},
                        {"round", round},
                        {"detail", detail},
                        {"injected", injected.load()},
                        {"injected_at_s", injected_at.load()},
                        {"replicated_masters", replicated},
                        {"masters", masters.size()},
                        {"documents", ids.size()},
                        {"from_remote", e1.promotions - e0.promotions},
                        {"prefilled_again", misses},
                        {"cold_prefill_s", cold},
                        {"rejected", rejected},
                        {"remote_misses", r1.misses - r0.misses},
                        {"ttft_s", ttft},
                        {"bytes_up", e1.bytes_up - e0.bytes_up},
                        {"dense_bytes", dense_bytes_of(ids)},
                        {"answer_same", answer_same},
                        {"logits_same", logits_same},
                        {"answer", text_of(answer)},
                        {"correct", text_of(answer).find(rc.code) != std::string::npos},
                        {"lookup_s", lookup_s},
                        {"orphan_payload_bytes", orphan_bytes},
                        {"failover_s", failover_s.load()},
                        {"new_owner", new_owner},
                        {"recover_s", recover_s},
                        {"client",
                         {{"connect_failures", c1.connect_failures - c0.connect_failures},
                          {"connection_errors", c1.connection_errors - c0.connection_errors},
                          {"failed", c1.failed - c0.failed},
                          {"moved", c1.moved - c0.moved},
                          {"slot_refreshes", c1.slot_refreshes - c0.slot_refreshes},
                          {"down_events", c1.down_events - c0.down_events}}}});
          LOG("[f %s] %s; injected %s; %zu docs: %lld from Redis, %d prefilled again; TTFT %.2f s; answer "
              "%s, "
              "logits %s\n",
              kind.c_str(), detail.c_str(), injected ? "yes" : "NO", ids.size(),
              static_cast<long long>(e1.promotions - e0.promotions), misses, ttft,
              answer_same ? "same" : "DIFFERS", logits_same ? "same" : "DIFFER");
          const auto secs = [](double x) {
            char b[32] = "-";
            if (x >= 0) std::snprintf(b, sizeof b, "%.2f s", x);
            return std::string(b);
          };
          char row[640];
          std::snprintf(row, sizeof row,
                        "| %s | %s | %s | %zu | %lld | %d | %lld | %.2f s | %.2f s | %s | %s | %s | %s |\n",
                        kind.c_str(), kind == "stop_cluster" ? "all nodes" : node.c_str(),
                        injected ? "yes" : "no", ids.size(),
                        static_cast<long long>(e1.promotions - e0.promotions), misses,
                        static_cast<long long>(rejected), lookup_s, ttft, answer_same ? "no" : "YES",
                        logits_same ? "no" : "YES", secs(failover_s.load()).c_str(), secs(recover_s).c_str());
          md << row;
          out["f"] = {{"runs", jf},
                      {"faults_injected", injected_total},
                      {"requests_served", served},
                      {"answers_differing", answers_differ},
                      {"logits_differing", logits_differ}};
          write_json();
        }
      }
      md << "\nFaults injected: " << injected_total << "; requests served: " << served
         << "; answers differing from the fault-free run: " << answers_differ
         << "; first-token logits differing: " << logits_differ << ".\n";
    }
#endif
    // Scenario b starts from its own store: give a's (and f's) pages back.
    for (const ChunkKey& k : store_a->chunk_keys()) store_a->drop_chunk(k);
    store_a.reset();

    // ---- b. cycling workload larger than the pool
    if (scenarios.count("b")) {
      const std::int64_t pool_pages = doc_pages_total / 3 + request_room;
      const std::int64_t host_cap = doc_pages_total * page_bytes / 3;
      auto store = Session::make_store(model, map, page_size, pool_pages);
      DocumentCache cache(model, store, model_path, so);
      // spill: the HostTier puts its least recently used objects into the DiskTier when it needs room;
      // plain: they are gone (and come back as misses).
      DiskTier disk(dir / "b", std::int64_t{1} << 40, true, fsync);
      HostTier host(host_cap, stack == "spill" ? &disk : nullptr);
      TieredChunkCache<float> engine(*store, model_fp, {&host, &disk});
      std::mt19937 rng(bo.seed * 104729u + 17u);
      std::map<std::string, std::int64_t> hits;
      std::map<std::string, std::vector<double>> ttft_by;
      std::vector<double> ttft_all;
      json jreq = json::array();
      int correct = 0;
      for (int r = 0; r < cycle_requests; ++r) {
        const RagCase rc = bench.make_case(length, max_new, r % bo.fact_docs, rng);
        const std::vector<int> ids = unique_docs(rc);
        const auto t0 = Clock::now();
        // The request's documents are pinned as they are found (spliced into a sequence of their own:
        // make_room and the store's own eviction pass over chunks in use), so that making room for one of
        // them never demotes another. First those already in the store, then room for the request's own
        // pages and every document still missing, then the others, promoted or prefilled alone.
        auto pin = std::make_unique<Session>(model, store, so);
        std::vector<int> src(ids.size(), 0);
        double promote_s = 0, cold_s = 0;
        std::int64_t need = request_room;
        for (std::size_t i = 0; i < ids.size(); ++i) {
          const ChunkKey k = cache.key(docs[static_cast<std::size_t>(ids[i])].tokens);
          if (store->has_chunk(k)) {
            const auto t = Clock::now();
            engine.lookup(k);
            promote_s += since(t);
            pin->splice(k);
          } else {
            need += doc_pages[static_cast<std::size_t>(ids[i])];
            src[i] = -1;  // not yet looked up
          }
        }
        const auto tm = Clock::now();
        engine.make_room(need);
        const double make_room_s = since(tm);
        for (std::size_t i = 0; i < ids.size(); ++i) {
          if (src[i] == 0) continue;
          const auto& toks = docs[static_cast<std::size_t>(ids[i])].tokens;
          const ChunkKey k = cache.key(toks);
          const std::string name = TieredChunkCache<float>::object_name(k);
          src[i] = host.contains(name) ? 1 : disk.contains(name) ? 2 : 3;
          const auto t = Clock::now();
          const bool found = engine.lookup(k).has_value();
          const double dt = since(t);
          if (!found) {
            src[i] = 3;  // a copy that failed to come back is a miss as well
            cold_s += cache.add(toks);
          } else {
            promote_s += dt;
          }
          pin->splice(k);
        }
        int worst = 0;
        json jsrc = json::array();
        for (int x : src) {
          ++hits[kSources[static_cast<std::size_t>(x)]];
          worst = std::max(worst, x);
          jsrc.push_back(kSources[static_cast<std::size_t>(x)]);
        }
        Session s(model, store, so);
        const RagResult rr = prefill_rag(s, cache, rc.request, spec);
        const double ttft = since(t0);
        pin.reset();
        const std::string answer = text_of(greedy_answer(s, rr.logits, max_new, is_end));
        correct += answer.find(rc.code) != std::string::npos;
        ttft_all.push_back(ttft);
        ttft_by[kSources[static_cast<std::size_t>(worst)]].push_back(ttft);
        jreq.push_back({{"docs", rc.doc_ids},
                        {"sources", jsrc},
                        {"worst", kSources[static_cast<std::size_t>(worst)]},
                        {"ttft_s", ttft},
                        {"make_room_s", make_room_s},
                        {"promote_s", promote_s},
                        {"cold_prefill_s", cold_s},
                        {"answer", answer}});
        LOG("[b %d/%d] worst source %-5s TTFT %6.2f s  make_room %.3f s  promote %.3f s  cold %.2f s\n",
            r + 1, cycle_requests, kSources[static_cast<std::size_t>(worst)].c_str(), ttft, make_room_s,
            promote_s, cold_s);
        const ChunkTierStats cs = engine.stats();
        const TierStats hs = host.stats(), ds = disk.stats();
        const ChunkStats ss = store->chunk_stats();
        std::int64_t lookups = 0;
        for (const auto& [k, v] : hits) lookups += v;
        json jh;
        for (const auto& src : kSources)
          jh[src] = {
              {"lookups", hits[src]},
              {"rate", lookups > 0 ? static_cast<double>(hits[src]) / static_cast<double>(lookups) : 0}};
        json jt;
        for (const auto& src : kSources) {
          const auto& v = ttft_by[src];
          jt[src] = {{"requests", v.size()},
                     {"median_s", median(v)},
                     {"p90_s", percentile(v, 90)},
                     {"min_s", v.empty() ? 0 : *std::min_element(v.begin(), v.end())},
                     {"max_s", v.empty() ? 0 : *std::max_element(v.begin(), v.end())}};
        }
        const auto tier_json = [](const TierStats& t) {
          return json{{"capacity_bytes", t.capacity_bytes},
                      {"bytes_held", t.bytes_held},
                      {"objects", t.objects},
                      {"hits", t.hits},
                      {"misses", t.misses},
                      {"evictions", t.evictions},
                      {"evicted_bytes", t.evicted_bytes},
                      {"spilled", t.spilled},
                      {"spilled_bytes", t.spilled_bytes},
                      {"bytes_written", t.bytes_written},
                      {"bytes_read", t.bytes_read},
                      {"put_failures", t.put_failures},
                      {"corrupt", t.corrupt},
                      {"get_s", static_cast<double>(t.get_ns) * 1e-9}};
        };
        out["b"] = {{"stack", stack},
                    {"spilled_to_disk", hs.spilled},
                    {"spilled_bytes", hs.spilled_bytes},
                    {"pool_bytes", pool_pages * page_bytes},
                    {"documents_bytes", doc_pages_total * page_bytes},
                    {"request_room_bytes", request_room * page_bytes},
                    {"requests", jreq},
                    {"hits", jh},
                    {"ttft_by_worst_source", jt},
                    {"ttft_median_s", median(ttft_all)},
                    {"accuracy", static_cast<double>(correct) / static_cast<double>(r + 1)},
                    {"chunks",
                     {{"demotions", cs.demotions},
                      {"dropped", cs.dropped},
                      {"write_failures", cs.write_failures},
                      {"promotions", cs.promotions},
                      {"promote_failures", cs.promote_failures},
                      {"rejected", cs.rejected},
                      {"misses", cs.misses},
                      {"bytes_down", cs.bytes_down},
                      {"bytes_up", cs.bytes_up}}},
                    {"store_evictions", ss.evictions},  // chunks the store dropped itself (no copy below)
                    {"host", tier_json(hs)},
                    {"disk", tier_json(ds)}};
        write_json();
      }
      const auto& b = out["b"];
      const auto mib = [](const json& x) { return x.get<double>() / 1048576.0; };
      char head[512];
      std::snprintf(head, sizeof head,
                    "\n**b. Cycling workload** (%d requests of %d tokens over %zu documents, %.0f MiB of KV; "
                    "pool %.0f MiB = a third of them + one request's room; HostTier %.0f MiB; DiskTier "
                    "unbounded)\n\n",
                    cycle_requests, length, docs.size(), mib(b["documents_bytes"]), mib(b["pool_bytes"]),
                    mib(b["host"]["capacity_bytes"]));
      md << head << "| documents found in | lookups | share |\n|---|---|---|\n";
      for (const auto& src : kSources) {
        char row[128];
        std::snprintf(row, sizeof row, "| %s | %lld | %.0f%% |\n", src.c_str(),
                      static_cast<long long>(b["hits"][src]["lookups"].get<std::int64_t>()),
                      100 * b["hits"][src]["rate"].get<double>());
        md << row;
      }
      md << "\n| slowest source of the request's documents | requests | TTFT median | TTFT p90 | TTFT "
            "min-max |\n"
            "|---|---|---|---|---|\n";
      for (const auto& src : kSources) {
        const auto& t = b["ttft_by_worst_source"][src];
        if (t["requests"].get<int>() == 0) continue;
        char row[192];
        std::snprintf(row, sizeof row, "| %s | %d | %.2f s | %.2f s | %.2f-%.2f s |\n", src.c_str(),
                      t["requests"].get<int>(), t["median_s"].get<double>(), t["p90_s"].get<double>(),
                      t["min_s"].get<double>(), t["max_s"].get<double>());
        md << row;
      }
      char tail[768];
      std::snprintf(
          tail, sizeof tail,
          "\nMoved down %.0f MiB (%lld demotions; %lld dropped without a copy), up %.0f MiB (%lld "
          "promotions; %lld failed, %lld rejected); stack %s: %lld objects (%.0f MiB) spilled from the "
          "HostTier to the DiskTier, HostTier evicted %lld objects (%.0f MiB) to nowhere, DiskTier %lld; "
          "the store dropped %lld chunks itself. Accuracy (planted code in the answer) %.2f.\n",
          mib(b["chunks"]["bytes_down"]),
          static_cast<long long>(b["chunks"]["demotions"].get<std::int64_t>()),
          static_cast<long long>(b["chunks"]["dropped"].get<std::int64_t>()), mib(b["chunks"]["bytes_up"]),
          static_cast<long long>(b["chunks"]["promotions"].get<std::int64_t>()),
          static_cast<long long>(b["chunks"]["promote_failures"].get<std::int64_t>()),
          static_cast<long long>(b["chunks"]["rejected"].get<std::int64_t>()), stack.c_str(),
          static_cast<long long>(b["spilled_to_disk"].get<std::int64_t>()), mib(b["spilled_bytes"]),
          static_cast<long long>(b["host"]["evictions"].get<std::int64_t>() -
                                 b["spilled_to_disk"].get<std::int64_t>()),
          mib(b["host"]["evicted_bytes"].get<double>() - b["spilled_bytes"].get<double>()),
          static_cast<long long>(b["disk"]["evictions"].get<std::int64_t>()),
          static_cast<long long>(b["store_evictions"].get<std::int64_t>()), b["accuracy"].get<double>());
      md << tail;
    }

    // ---- c. preemption
    if (scenarios.count("c")) {
      const std::int64_t per_seq =
          peak_sequence_pages(map, page_size, preempt_length + preempt_new, so.chunk);
      // The prompts are prefilled once; every run decodes forks of them (they share the prompt's pages), so
      // runs differ only in the swaps. Room: the prompts, and each fork's own pages (bounded by a
      // sequence's).
      auto store = Session::make_store(model, map, page_size, (2 * n_preempt + 1) * per_seq);
      std::mt19937 rng(bo.seed * 15485863u + 5u);
      std::vector<std::unique_ptr<Session>> base;
      std::vector<std::vector<float>> base_logits;
      std::vector<int> swap_step;
      for (int k = 0; k < n_preempt; ++k) {
        // A plain prompt: the system turn and documents from the k-th on, cut at --preempt-length tokens.
        std::vector<std::int32_t> p = bench.system();
        for (std::size_t j = 0; static_cast<int>(p.size()) < preempt_length; ++j) {
          const auto& d = docs[(static_cast<std::size_t>(k) * 7 + j) % docs.size()].tokens;
          p.insert(p.end(), d.begin(), d.end());
        }
        p.resize(static_cast<std::size_t>(preempt_length));
        base.push_back(std::make_unique<Session>(model, store, so));
        base_logits.push_back(base.back()->prefill(p));
        swap_step.push_back(std::uniform_int_distribution<int>(1, preempt_new - 2)(rng));
      }
      struct Trace {
        std::vector<std::vector<std::int32_t>> tokens;
        std::vector<std::vector<float>> logits;  // every step's, concatenated
        std::vector<double> out_s, in_s, wait_s, resident;
        std::vector<double> resume_s;  // swap-in start to the end of the sequence's next step
        std::vector<std::int64_t> bytes, local_bytes, global_bytes, cold_bytes;
      };
      // Where a swap puts the objects: local heads' to `hot`, global heads' to `cold`; drop: the DiskTier's
      // objects are flushed and dropped from the page cache right after the swap-out (swap-in reads the
      // device); prefetch: swap-in reads every object ahead on a TierPrefetcher; pipelined:
      // swap_in_pipelined, the next step runs while the layers arrive (read, checked and decoded on the
      // TierPrefetcher).
      struct Placement {
        std::string name;
        KvTier* hot;
        KvTier* cold;
        bool drop, prefetch, pipelined = false;
      };
      TierPrefetcher prefetcher(2);
      HostTier host(std::int64_t{1} << 40);
      DiskTier disk(dir / "c", std::int64_t{1} << 40, true, fsync);
      // Round-robin greedy decoding of every prompt; sequence k is swapped out before its step swap_step[k]
      // and back in two rounds later (no placement: uninterrupted).
      const auto decode_all = [&](const Placement* pl, const std::string& tag) {
        Trace tr;
        std::vector<std::unique_ptr<Session>> ss;
        std::vector<std::vector<float>> logits;
        for (std::size_t k = 0; k < base.size(); ++k) {
          ss.push_back(base[k]->fork());
          logits.push_back(base_logits[k]);
        }
        const std::size_t K = base.size();
        tr.tokens.resize(K);
        tr.logits.resize(K);
        std::vector<int> back_at(K, -1);
        std::vector<SwapTicket> tickets(K);
        std::vector<std::optional<Clock::time_point>> resume_t0(K);
        for (int round = 0;; ++round) {
          bool busy = false;
          for (std::size_t k = 0; k < K; ++k) {
            auto& toks = tr.tokens[k];
            if (static_cast<int>(toks.size()) >= preempt_new) continue;
            busy = true;
            if (ss[k]->swapped_out()) {
              if (round < back_at[k]) continue;
              SwapInStats st;
              const auto t = Clock::now();
              resume_t0[k] = t;
              if (pl->pipelined) {
                ss[k]->swap_in_pipelined(tickets[k], *pl->hot, *pl->cold, prefetcher);
              } else {
                ss[k]->swap_in(tickets[k], *pl->hot, *pl->cold, pl->prefetch ? &prefetcher : nullptr, &st);
                tr.wait_s.push_back(static_cast<double>(st.wait_ns) * 1e-9);
              }
              tr.in_s.push_back(since(t));
            } else if (pl != nullptr && back_at[k] < 0 && static_cast<int>(toks.size()) == swap_step[k]) {
              const auto t = Clock::now();
              tickets[k] = ss[k]->swap_out(*pl->hot, *pl->cold, model_fp, tag + "-" + std::to_string(k));
              tr.out_s.push_back(since(t));
              std::int64_t local = 0, global = 0, on_cold = 0;
              double res = 0;
              int res_n = 0;
              for (const SwapObject& o : tickets[k].objects) {
                (o.local ? local : global) += o.bytes;
                KvTier* where = o.cold ? pl->cold : pl->hot;
                if (o.cold) on_cold += o.bytes;
                if (pl->drop && where == &disk) {
                  const double r = drop_from_page_cache(disk.path_of(o.name));
                  if (r >= 0) res += r, ++res_n;
                }
              }
              if (res_n > 0) tr.resident.push_back(res / res_n);
              tr.bytes.push_back(local + global);
              tr.local_bytes.push_back(local);
              tr.global_bytes.push_back(global);
              tr.cold_bytes.push_back(on_cold);
              back_at[k] = round + 2;
              continue;
            }
            tr.logits[k].insert(tr.logits[k].end(), logits[k].begin(), logits[k].end());
            toks.push_back(argmax(logits[k]));
            if (static_cast<int>(toks.size()) < preempt_new)
              ss[k]->forward(std::span<const std::int32_t>(&toks.back(), 1), false, logits[k]);
            if (resume_t0[k]) {
              tr.resume_s.push_back(since(*resume_t0[k]));
              if (pl->pipelined)  // the restore finished inside that step
                tr.wait_s.push_back(static_cast<double>(ss[k]->last_pipelined_swap_in().wait_ns) * 1e-9);
              resume_t0[k].reset();
            }
          }
          if (!busy) break;
        }
        return tr;
      };
      LOG("preemption: %d sequences of %d tokens, %d new tokens each; reference run...\n", n_preempt,
          preempt_length, preempt_new);
      const Trace ref = decode_all(nullptr, "");
      json jc;
      md << "\n**c. Preemption** (" << n_preempt << " sequences of " << preempt_length
         << " prompt tokens decoding " << preempt_new
         << " tokens greedily round-robin; each swapped out at a random step and back two rounds later; "
         << repeats << " repeats, medians)\n\n"
         << "| placement | swap-out (median) | swap-in (median) | swap-in + next step (median) | of which "
            "waiting on reads | bytes per sequence (median) | local heads' | global heads' | token "
            "mismatches | "
            "logit mismatches |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n";
      const std::vector<Placement> placements = {
          {"host", &host, &host, false, false},
          {"disk", &disk, &disk, false, false},
          {"disk_dropped", &disk, &disk, true, false},
          {"split", &host, &disk, false, false},
          {"split_dropped", &host, &disk, true, false},
          {"split_dropped_prefetch", &host, &disk, true, true},
          {"split_pipelined", &host, &disk, false, false, true},
          {"split_dropped_pipelined", &host, &disk, true, false, true}};
      for (const Placement& pl : placements) {
        const std::string& name = pl.name;
        std::vector<double> out_s, in_s, resume_s, wait_s, resident, bytes, local, global, on_cold;
        int tok_mismatch = 0, logit_mismatch = 0;
        for (int rep = 0; rep < repeats; ++rep) {
          const Trace tr = decode_all(&pl, name + std::to_string(rep));
          for (std::size_t k = 0; k < base.size(); ++k) {
            if (tr.tokens[k] != ref.tokens[k]) {
              ++tok_mismatch;
              std::fprintf(stderr, "TOKENS DIFFER: sequence %zu via %s repeat %d\n", k, name.c_str(), rep);
            }
            if (!same_bits(tr.logits[k], ref.logits[k])) ++logit_mismatch;
          }
          out_s.insert(out_s.end(), tr.out_s.begin(), tr.out_s.end());
          in_s.insert(in_s.end(), tr.in_s.begin(), tr.in_s.end());
          resume_s.insert(resume_s.end(), tr.resume_s.begin(), tr.resume_s.end());
          wait_s.insert(wait_s.end(), tr.wait_s.begin(), tr.wait_s.end());
          resident.insert(resident.end(), tr.resident.begin(), tr.resident.end());
          for (std::size_t i = 0; i < tr.bytes.size(); ++i) {
            on_cold.push_back(static_cast<double>(tr.cold_bytes[i]));
            bytes.push_back(static_cast<double>(tr.bytes[i]));
            local.push_back(static_cast<double>(tr.local_bytes[i]));
            global.push_back(static_cast<double>(tr.global_bytes[i]));
          }
          LOG("[c %s rep %d] swap-out %.3f s, swap-in %.3f s (medians)\n", name.c_str(), rep + 1,
              median(tr.out_s), median(tr.in_s));
        }
        jc[name] = {{"swaps", out_s.size()},
                    {"swap_out_median_s", median(out_s)},
                    {"swap_in_median_s", median(in_s)},
                    {"swap_out_s", out_s},
                    {"swap_in_s", in_s},
                    {"swap_in_wait_median_s", median(wait_s)},
                    {"resume_median_s", median(resume_s)},
                    {"resume_s", resume_s},
                    {"pipelined", pl.pipelined},
                    {"hot", pl.hot == &host ? "host" : "disk"},
                    {"cold", pl.cold == &host ? "host" : "disk"},
                    {"dropped_from_page_cache", pl.drop},
                    {"prefetch", pl.prefetch},
                    {"resident_fraction_median", resident.empty() ? -1.0 : median(resident)},
                    {"cold_tier_bytes_median", median(on_cold)},
                    {"bytes_median", median(bytes)},
                    {"local_bytes_median", median(local)},
                    {"global_bytes_median", median(global)},
                    {"token_mismatches", tok_mismatch},
                    {"logit_mismatches", logit_mismatch},
                    {"sequences_compared", n_preempt * repeats}};
        char row[384];
        std::snprintf(row, sizeof row,
                      "| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f MiB | %.1f MiB | %.1f MiB | %d / "
                      "%d | %d / %d |\n",
                      name.c_str(), 1e3 * median(out_s), 1e3 * median(in_s), 1e3 * median(resume_s),
                      1e3 * median(wait_s), median(bytes) / 1048576.0, median(local) / 1048576.0,
                      median(global) / 1048576.0, tok_mismatch, n_preempt * repeats, logit_mismatch,
                      n_preempt * repeats);
        md << row;
        out["c"] = jc;
        write_json();
      }
      jc["swap_steps"] = swap_step;
      out["c"] = jc;
    }

    out["load_end"] = load_average();
    md << "\nMachine load average at end: " << out["load_end"].get<std::string>() << "\n";
    LOG("load average at end: %s\n", load_average().c_str());
    write_json();
    std::printf("%s", md.str().c_str());
    if (args.has("md")) std::ofstream(args.get("md")) << md.str();
    std::error_code ec;
    fs::remove_all(dir, ec);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redknot-tier-bench: %s\n", e.what());
    return 1;
  }
}
