// The remote tier (include/redknot/redis_tier.hpp): a Redis Cluster client on hiredis and RedisTier.
#include "redknot/redis_tier.hpp"

#define XXH_INLINE_ALL  // header-only use, as in tiers.cpp
#include <xxhash.h>

#include <hiredis/hiredis.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "little_endian.hpp"

namespace redknot {

namespace {

using Clock = std::chrono::steady_clock;

std::uint64_t xxh64(const void* data, std::size_t n) { return XXH3_64bits(data, n); }

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<decltype(tv.tv_sec)>(ms.count() / 1000);
  tv.tv_usec = static_cast<decltype(tv.tv_usec)>((ms.count() % 1000) * 1000);
  return tv;
}

// "host:port" -> (host, port), or nullopt.
std::optional<std::pair<std::string, int>> split_node(const std::string& node) {
  const std::size_t colon = node.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == node.size()) return std::nullopt;
  int port = 0;
  for (std::size_t i = colon + 1; i < node.size(); ++i) {
    if (node[i] < '0' || node[i] > '9' || port > 65535) return std::nullopt;
    port = port * 10 + (node[i] - '0');
  }
  if (port < 1 || port > 65535) return std::nullopt;
  return std::make_pair(node.substr(0, colon), port);
}

RedisReply convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_NIL:
      out.type = RedisReply::Type::kNil;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kError;
      out.str = "unsupported reply type";
  }
  return out;
}

RedisReply failed(std::string why) {
  RedisReply r;
  r.type = RedisReply::Type::kFailed;
  r.str = std::move(why);
  return r;
}

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

// Appends one command to a context's output buffer (binary safe).
void append_argv(redisContext* c, const std::vector<std::string>& argv) {
  std::vector<const char*> ptrs;
  std::vector<std::size_t> lens;
  for (const std::string& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  redisAppendCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data());
}

}  // namespace

// ---- slots

std::uint16_t redis_crc16(std::string_view bytes) {
  std::uint16_t crc = 0;
  for (const char ch : bytes) {
    crc ^= static_cast<std::uint16_t>(static_cast<std::uint8_t>(ch) << 8);
    for (int b = 0; b < 8; ++b)
      crc = (crc & 0x8000) != 0 ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<std::uint16_t>(crc << 1);
  }
  return crc;
}

int redis_key_slot(std::string_view key) {
  const std::size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const std::size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return redis_crc16(key) & 16383;
}

// ---- RedisClusterClient

RedisClusterClient::RedisClusterClient(RedisClusterOptions opt) : opt_(std::move(opt)) {
  require(!opt_.seeds.empty(), "RedisClusterClient: no seed node");
  for (const std::string& s : opt_.seeds)
    require(split_node(s).has_value(), "RedisClusterClient: seed '", s, "' is not host:port");
  require(opt_.connect_timeout.count() > 0 && opt_.command_timeout.count() > 0 &&
              opt_.request_deadline.count() > 0,
          "RedisClusterClient: timeouts must be > 0 ms");
  require(opt_.max_rounds >= 1 && opt_.max_rounds <= 64, "RedisClusterClient: max_rounds=", opt_.max_rounds,
          " must be in [1, 64]");
  require(opt_.outage_retry.count() >= 0, "RedisClusterClient: outage_retry=", opt_.outage_retry.count(),
          " ms must be >= 0");
  owner_.fill(-1);
  known_ = opt_.seeds;
  const std::lock_guard lock(mu_);
  refresh_locked(Clock::now() + opt_.request_deadline);
}

RedisClusterClient::~RedisClusterClient() {
  for (auto& [node, c] : conns_) redisFree(c);
}

redisContext* RedisClusterClient::conn(const std::string& node) {
  if (const auto it = conns_.find(node); it != conns_.end()) return it->second;
  const auto hp = split_node(node);
  if (!hp) return nullptr;
  redisContext* c = redisConnectWithTimeout(hp->first.c_str(), hp->second, to_timeval(opt_.connect_timeout));
  if (c == nullptr || c->err != 0 || redisSetTimeout(c, to_timeval(opt_.command_timeout)) != REDIS_OK) {
    if (c != nullptr) redisFree(c);
    ++st_.connect_failures;
    return nullptr;
  }
  conns_.emplace(node, c);
  return c;
}

void RedisClusterClient::drop(const std::string& node) {
  if (const auto it = conns_.find(node); it != conns_.end()) {
    redisFree(it->second);
    conns_.erase(it);
  }
}

bool RedisClusterClient::load_slots_from(const std::string& node) {
  redisContext* c = conn(node);
  if (c == nullptr) return false;
  auto* raw = static_cast<redisReply*>(redisCommand(c, "CLUSTER SLOTS"));
  if (raw == nullptr) {
    ++st_.connection_errors;
    drop(node);
    return false;
  }
  const RedisReply r = convert(raw);
  freeReplyObject(raw);
  if (r.type != RedisReply::Type::kArray || r.elements.empty()) return false;  // not (yet) a cluster
  const std::string host = split_node(node)->first;
  const auto addr = [&](const RedisReply& n) -> std::optional<std::string> {
    if (n.type != RedisReply::Type::kArray || n.elements.size() < 2 ||
        n.elements[1].type != RedisReply::Type::kInteger)
      return std::nullopt;
    // An empty host means "the address you reached me at" (CLUSTER SLOTS of Redis 7).
    const std::string& h = n.elements[0].str.empty() ? host : n.elements[0].str;
    return h + ":" + std::to_string(n.elements[1].integer);
  };
  std::vector<std::string> nodes;
  std::array<std::int16_t, 16384> owner;
  owner.fill(-1);
  for (const RedisReply& e : r.elements) {
    if (e.type != RedisReply::Type::kArray || e.elements.size() < 3 ||
        e.elements[0].type != RedisReply::Type::kInteger || e.elements[1].type != RedisReply::Type::kInteger)
      return false;
    const long long lo = e.elements[0].integer, hi = e.elements[1].integer;
    const auto master = addr(e.elements[2]);
    if (!master || lo < 0 || hi > 16383 || lo > hi) return false;
    auto it = std::find(nodes.begin(), nodes.end(), *master);
    if (it == nodes.end()) it = nodes.insert(nodes.end(), *master);
    for (long long s = lo; s <= hi; ++s)
      owner[static_cast<std::size_t>(s)] = static_cast<std::int16_t>(it - nodes.begin());
    for (std::size_t i = 2; i < e.elements.size(); ++i)
      if (const auto a = addr(e.elements[i]);
          a && std::find(known_.begin(), known_.end(), *a) == known_.end())
        known_.push_back(*a);  // replicas too: after a failover they are the masters
  }
  nodes_ = std::move(nodes);
  owner_ = owner;
  have_map_ = true;
  return true;
}

bool RedisClusterClient::refresh_locked(Clock::time_point deadline) {
  ++st_.slot_refreshes;
  std::vector<std::string> order = nodes_;  // the masters first, then everyone ever seen
  for (const std::string& k : known_)
    if (std::find(order.begin(), order.end(), k) == order.end()) order.push_back(k);
  for (std::size_t i = 0; i < order.size(); ++i) {
    // The first node is always tried; more only within the caller's deadline (nodes that are stopped rather
    // than dead accept connections and then time out, one command timeout each).
    if (i > 0 && Clock::now() >= deadline) break;
    if (load_slots_from(order[i])) return true;
  }
  return false;
}

bool RedisClusterClient::refresh_slots() {
  const std::lock_guard lock(mu_);
  return refresh_locked(Clock::now() + opt_.request_deadline);
}

std::string RedisClusterClient::node_of_slot(int slot) const {
  require(slot >= 0 && slot < 16384, "node_of_slot: slot ", slot, " out of [0, 16384)");
  const std::lock_guard lock(mu_);
  const int o = owner_[static_cast<std::size_t>(slot)];
  return o < 0 ? std::string() : nodes_[static_cast<std::size_t>(o)];
}

std::vector<std::string> RedisClusterClient::masters() const {
  const std::lock_guard lock(mu_);
  return nodes_;
}

RedisClientStats RedisClusterClient::stats() const {
  const std::lock_guard lock(mu_);
  return st_;
}

void RedisClusterClient::note_reachable(bool reachable, const std::string& why) {
  // One line when the cluster stops answering and one when it is back: a down cluster turns every request
  // into a miss, and a line per request would drown the log.
  if (!reachable) retry_at_ = Clock::now() + opt_.outage_retry;
  if (!reachable && !down_logged_) {
    std::fprintf(stderr,
                 "redknot: Redis Cluster unreachable (seeds %s...): %s; requests miss until it answers\n",
                 opt_.seeds.front().c_str(), why.c_str());
    down_logged_ = true;
    ++st_.down_events;
  } else if (reachable && down_logged_) {
    std::fprintf(stderr, "redknot: Redis Cluster answers again\n");
    down_logged_ = false;
  }
}

std::vector<RedisReply> RedisClusterClient::run(const std::vector<std::vector<std::string>>& commands,
                                                int key_arg) {
  require(key_arg >= 0, "RedisClusterClient::run: key_arg=", key_arg, " must be >= 0");
  for (const auto& argv : commands)
    require(argv.size() > static_cast<std::size_t>(key_arg),
            "RedisClusterClient::run: a command has no argument ", key_arg, " (its key)");
  const std::lock_guard lock(mu_);
  const std::size_t n = commands.size();
  if (down_logged_ && Clock::now() < retry_at_) {  // an outage: no connection attempt until retry_at_
    st_.failed += static_cast<std::int64_t>(n);
    st_.fast_failures += static_cast<std::int64_t>(n);
    return std::vector<RedisReply>(n,
                                   failed("the cluster is unreachable (outage); the next attempt waits for "
                                          "outage_retry"));
  }
  std::vector<RedisReply> out(n, failed("not sent"));
  std::vector<std::string> ask(n);  // the node an ASK redirect named, for the next round
  std::vector<std::size_t> pending(n);
  for (std::size_t i = 0; i < n; ++i) pending[i] = i;
  const auto deadline = Clock::now() + opt_.request_deadline;
  bool need_refresh = !have_map_;
  bool any_answer = false;
  for (int round = 0; round < opt_.max_rounds && !pending.empty(); ++round) {
    if (round > 0 && Clock::now() >= deadline) break;
    // A slot map read from any node also means the cluster answers (one dead master is not an outage).
    if (need_refresh && refresh_locked(deadline)) any_answer = true;
    need_refresh = false;
    bool back_off = false;
    std::map<std::string, std::vector<std::size_t>> by_node;
    std::vector<std::size_t> next;
    for (const std::size_t i : pending) {
      std::string node = ask[i];
      if (node.empty()) {
        const int o =
            owner_[static_cast<std::size_t>(redis_key_slot(commands[i][static_cast<std::size_t>(key_arg)]))];
        if (o >= 0) node = nodes_[static_cast<std::size_t>(o)];
      }
      if (node.empty()) {
        out[i] = failed(have_map_ ? "no node serves the key's slot"
                                  : "no slot map: no known node answered CLUSTER SLOTS");
        next.push_back(i);
        need_refresh = back_off = true;
      } else {
        by_node[node].push_back(i);
      }
    }
    for (auto& [node, idx] : by_node) {
      // Past the deadline no further node is contacted: a call waits for at most one node beyond it.
      if (Clock::now() >= deadline) {
        for (const std::size_t i : idx) {
          out[i] = failed("deadline passed before " + node + " was asked");
          next.push_back(i);
        }
        continue;
      }
      redisContext* c = conn(node);
      if (c == nullptr) {
        for (const std::size_t i : idx) {
          out[i] = failed("cannot connect to " + node);
          ask[i].clear();
          next.push_back(i);
        }
        need_refresh = back_off = true;
        continue;
      }
      for (const std::size_t i : idx) {
        if (!ask[i].empty()) redisAppendCommand(c, "ASKING");
        append_argv(c, commands[i]);
      }
      std::size_t k = 0;
      for (; k < idx.size(); ++k) {
        const std::size_t i = idx[k];
        const bool asking = !ask[i].empty();
        ask[i].clear();
        redisReply* raw = nullptr;
        bool lost = false;
        if (asking) {
          lost = redisGetReply(c, reinterpret_cast<void**>(&raw)) != REDIS_OK || raw == nullptr;
          if (raw != nullptr) freeReplyObject(raw);
          raw = nullptr;
        }
        lost = lost || redisGetReply(c, reinterpret_cast<void**>(&raw)) != REDIS_OK || raw == nullptr;
        if (lost) {
          // Lost or timed out mid-pipeline: the context is unusable, and what it had not answered is retried
          // (GET / SET / DEL / EXISTS are idempotent) after a slot-map refresh.
          // hiredis reports a socket timeout as EAGAIN's text; say what it means.
          const bool timed_out = c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
          const std::string why = detail::concat(
              "connection to ", node, ": ", timed_out ? "no answer within the command timeout" : c->errstr);
          ++st_.connection_errors;
          drop(node);
          for (; k < idx.size(); ++k) {
            out[idx[k]] = failed(why);
            next.push_back(idx[k]);
          }
          need_refresh = back_off = true;
          break;
        }
        RedisReply r = convert(raw);
        freeReplyObject(raw);
        any_answer = true;
        if (r.type == RedisReply::Type::kError) {
          const bool moved = starts_with(r.str, "MOVED "), is_ask = starts_with(r.str, "ASK ");
          if (moved || is_ask) {
            // "MOVED <slot> <host:port>": the slot lives there now; "ASK ...": this key, this once.
            const std::size_t sp1 = r.str.find(' '), sp2 = r.str.find(' ', sp1 + 1);
            const std::string target = sp2 == std::string::npos ? std::string() : r.str.substr(sp2 + 1);
            if (split_node(target)) {
              if (moved) {
                ++st_.moved;
                const int slot = std::atoi(r.str.c_str() + sp1 + 1);
                auto it = std::find(nodes_.begin(), nodes_.end(), target);
                if (it == nodes_.end()) it = nodes_.insert(nodes_.end(), target);
                if (slot >= 0 && slot < 16384)
                  owner_[static_cast<std::size_t>(slot)] = static_cast<std::int16_t>(it - nodes_.begin());
                need_refresh = true;  // one slot moved: probably more did
              } else {
                ++st_.ask;
                ask[i] = target;
              }
              out[i] = std::move(r);
              next.push_back(i);
              continue;
            }
          }
          if (starts_with(r.str, "TRYAGAIN") || starts_with(r.str, "CLUSTERDOWN") ||
              starts_with(r.str, "LOADING") || starts_with(r.str, "MASTERDOWN")) {
            ++st_.retries;
            out[i] = std::move(r);
            next.push_back(i);
            need_refresh = back_off = true;
            continue;
          }
        }
        ++st_.commands;
        out[i] = std::move(r);
      }
    }
    pending = std::move(next);
    if (!pending.empty() && back_off) {
      // A failover takes the cluster node timeout or so: wait a little, growing, never past the deadline.
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      const auto wait =
          std::min<std::chrono::milliseconds>(std::chrono::milliseconds(25 << std::min(round, 4)), left);
      if (wait.count() > 0) std::this_thread::sleep_for(wait);
    }
  }
  for (const std::size_t i : pending) {
    ++st_.failed;
    if (out[i].type == RedisReply::Type::kError) out[i] = failed("gave up after redirects: " + out[i].str);
  }
  if (n > 0) note_reachable(any_answer, pending.empty() ? std::string() : out[pending.front()].str);
  return out;
}

RedisReply RedisClusterClient::command(std::vector<std::string> argv, int key_arg) {
  std::vector<std::vector<std::string>> one{std::move(argv)};
  return std::move(run(one, key_arg).front());
}

RedisReply RedisClusterClient::command_at(const std::string& node, std::vector<std::string> argv) {
  require(split_node(node).has_value(), "command_at: '", node, "' is not host:port");
  require(!argv.empty(), "command_at: empty command");
  const std::lock_guard lock(mu_);
  redisContext* c = conn(node);
  if (c == nullptr) return failed("cannot connect to " + node);
  append_argv(c, argv);
  redisReply* raw = nullptr;
  if (redisGetReply(c, reinterpret_cast<void**>(&raw)) != REDIS_OK || raw == nullptr) {
    RedisReply r = failed(detail::concat("connection to ", node, ": ", c->errstr));
    ++st_.connection_errors;
    drop(node);
    return r;
  }
  RedisReply r = convert(raw);
  freeReplyObject(raw);
  return r;
}

// ---- The object format

namespace {

constexpr std::uint32_t kObjectMagic = 0x4F544B52u;  // "RKTO", as DiskTier's files
constexpr std::uint32_t kIndexMagic = 0x49524B52u;   // "RKRI"
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kObjectHeader = 32;  // magic, version, payload length, payload hash, name hash
constexpr std::size_t kIndexBytes = 48;    // magic, version, nonce, length, payload hash, name hash, own hash

constexpr const char* kDelIfEqual =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

struct Index {
  std::uint64_t nonce = 0, length = 0, payload_hash = 0, name_hash = 0;
};

std::uint64_t name_hash(std::string_view name) { return xxh64(name.data(), name.size()); }

bool prefix_ok(std::string_view prefix) {
  return !prefix.empty() && prefix.size() <= 64 && std::all_of(prefix.begin(), prefix.end(), [](char c) {
    return c > ' ' && c < 127 && c != '{' && c != '}';
  });
}

void check_prefix(std::string_view prefix) {
  require(prefix_ok(prefix), "redis key prefix '", prefix,
          "' must be 1..64 printable characters without braces or spaces");
}

// Unchecked: RedisTier checked its prefix once and each name on entry.
std::string index_key_of(std::string_view prefix, std::string_view name) {
  return detail::concat(prefix, ":{", name, "}:i");
}

std::string payload_key_of(std::string_view prefix, std::string_view name, std::uint64_t nonce) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(nonce));
  return detail::concat(prefix, ":{", name, "}:p:", hex);
}

Index make_index(std::string_view name, std::span<const std::byte> bytes, std::uint64_t nonce) {
  Index ix;
  ix.nonce = nonce;
  ix.length = bytes.size();
  ix.payload_hash = xxh64(bytes.data(), bytes.size());
  ix.name_hash = name_hash(name);
  return ix;
}

std::string encode_index(const Index& ix) {
  std::byte b[kIndexBytes];
  le::put<std::uint32_t>(b, kIndexMagic);
  le::put<std::uint32_t>(b + 4, kVersion);
  le::put<std::uint64_t>(b + 8, ix.nonce);
  le::put<std::uint64_t>(b + 16, ix.length);
  le::put<std::uint64_t>(b + 24, ix.payload_hash);
  le::put<std::uint64_t>(b + 32, ix.name_hash);
  le::put<std::uint64_t>(b + 40, xxh64(b, 40));
  return std::string(reinterpret_cast<const char*>(b), kIndexBytes);
}

std::optional<Index> decode_index(std::string_view s, std::uint64_t name_hash) {
  if (s.size() != kIndexBytes) return std::nullopt;
  const auto* b = reinterpret_cast<const std::byte*>(s.data());
  if (le::get<std::uint32_t>(b) != kIndexMagic || le::get<std::uint32_t>(b + 4) != kVersion ||
      le::get<std::uint64_t>(b + 40) != xxh64(b, 40) || le::get<std::uint64_t>(b + 32) != name_hash)
    return std::nullopt;
  return Index{le::get<std::uint64_t>(b + 8), le::get<std::uint64_t>(b + 16), le::get<std::uint64_t>(b + 24),
               le::get<std::uint64_t>(b + 32)};
}

std::string encode_payload(const Index& ix, std::span<const std::byte> bytes) {
  std::string value(kObjectHeader + bytes.size(), '\0');
  auto* h = reinterpret_cast<std::byte*>(value.data());
  le::put<std::uint32_t>(h, kObjectMagic);
  le::put<std::uint32_t>(h + 4, kVersion);
  le::put<std::uint64_t>(h + 8, ix.length);
  le::put<std::uint64_t>(h + 16, ix.payload_hash);
  le::put<std::uint64_t>(h + 24, ix.name_hash);
  if (!bytes.empty()) std::memcpy(value.data() + kObjectHeader, bytes.data(), bytes.size());
  return value;
}

// The bytes of a payload value that matches its index in every field and hash; nullopt otherwise.
std::optional<std::vector<std::byte>> decode_payload(const Index& ix, std::string_view v) {
  if (v.size() < kObjectHeader) return std::nullopt;
  const auto* h = reinterpret_cast<const std::byte*>(v.data());
  if (le::get<std::uint32_t>(h) != kObjectMagic || le::get<std::uint32_t>(h + 4) != kVersion ||
      le::get<std::uint64_t>(h + 8) != ix.length || v.size() - kObjectHeader != ix.length ||
      le::get<std::uint64_t>(h + 16) != ix.payload_hash || le::get<std::uint64_t>(h + 24) != ix.name_hash ||
      xxh64(v.data() + kObjectHeader, v.size() - kObjectHeader) != ix.payload_hash)
    return std::nullopt;
  return std::vector<std::byte>(h + kObjectHeader, h + v.size());
}

// Nanoseconds since construction, added to a counter under a lock when the scope ends.
class LockedTimer {
 public:
  LockedTimer(std::mutex& mu, std::int64_t& ns) : mu_(mu), ns_(ns), t0_(Clock::now()) {}
  ~LockedTimer() {
    const auto d = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_).count();
    const std::lock_guard lock(mu_);
    ns_ += d;
  }
  LockedTimer(const LockedTimer&) = delete;
  LockedTimer& operator=(const LockedTimer&) = delete;

 private:
  std::mutex& mu_;
  std::int64_t& ns_;
  Clock::time_point t0_;
};

}  // namespace

std::string redis_index_key(std::string_view prefix, std::string_view name) {
  check_prefix(prefix);
  check_object_name(name);
  return index_key_of(prefix, name);
}

std::string redis_payload_key(std::string_view prefix, std::string_view name, std::uint64_t nonce) {
  check_prefix(prefix);
  check_object_name(name);
  return payload_key_of(prefix, name, nonce);
}

RedisObjectValues encode_redis_object(std::string_view name, std::span<const std::byte> bytes,
                                      std::uint64_t nonce) {
  check_object_name(name);
  const Index ix = make_index(name, bytes, nonce);
  return {encode_payload(ix, bytes), encode_index(ix)};
}

std::optional<std::uint64_t> redis_index_nonce(std::string_view name, std::string_view index_value) {
  check_object_name(name);
  const auto ix = decode_index(index_value, name_hash(name));
  return ix ? std::optional<std::uint64_t>(ix->nonce) : std::nullopt;
}

std::optional<std::vector<std::byte>> decode_redis_object(std::string_view name,
                                                          std::string_view payload_value,
                                                          std::string_view index_value) {
  check_object_name(name);
  const auto ix = decode_index(index_value, name_hash(name));
  return ix ? decode_payload(*ix, payload_value) : std::nullopt;
}

// ---- RedisTier

void RedisTier::check_options(const RedisTierOptions& opt) {
  require(prefix_ok(opt.prefix), "RedisTier: prefix '", opt.prefix,
          "' must be 1..64 printable characters without braces or spaces");
  require(opt.ttl.count() >= 0, "RedisTier: ttl must be >= 0 ms");
  require(opt.max_object_bytes >= 0 && opt.max_object_bytes <= (std::int64_t{512} << 20) - 64,
          "RedisTier: max_object_bytes=", opt.max_object_bytes, " must be in [0, 512 MiB - 64]");
}

RedisTier::RedisTier(RedisClusterClient& client, RedisTierOptions opt)
    : client_(client), opt_(std::move(opt)) {
  check_options(opt_);
  // Nonces name each write's payload key; they only need to differ between writers of one name.
  std::random_device rd;
  nonce_state_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
                 static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) ^
                 (static_cast<std::uint64_t>(::getpid()) << 17);
}

std::string RedisTier::index_key(std::string_view name) const {
  check_object_name(name);
  return index_key_of(opt_.prefix, name);
}

std::string RedisTier::payload_key(std::string_view name) const {
  const RedisReply r = client_.command({"GET", index_key(name)});
  if (r.type != RedisReply::Type::kString) return {};
  const auto ix = decode_index(r.str, name_hash(name));
  return ix ? payload_key_of(opt_.prefix, name, ix->nonce) : std::string();
}

bool RedisTier::put(std::string_view name, std::span<const std::byte> bytes) {
  check_object_name(name);
  const auto fail = [&] {
    const std::lock_guard lock(mu_);
    ++st_.put_failures;
    return false;
  };
  if (static_cast<std::int64_t>(bytes.size()) > opt_.max_object_bytes) return fail();
  std::uint64_t nonce = 0;
  {
    const std::lock_guard lock(mu_);
    // splitmix64
    std::uint64_t z = (nonce_state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    nonce = z ^ (z >> 31);
  }
  const Index ix = make_index(name, bytes, nonce);
  const std::string pkey = payload_key_of(opt_.prefix, name, ix.nonce);
  std::vector<std::string> set_payload{"SET", pkey, encode_payload(ix, bytes)};
  std::vector<std::string> set_index{"SET", index_key_of(opt_.prefix, name), encode_index(ix)};
  if (opt_.ttl.count() > 0) {
    for (auto* c : {&set_payload, &set_index}) {
      c->push_back("PX");
      c->push_back(std::to_string(opt_.ttl.count()));
    }
  }
  set_index.push_back("GET");  // the index it replaces names the old payload, deleted below
  const std::int64_t written = static_cast<std::int64_t>(kObjectHeader + bytes.size() + kIndexBytes);
  // Payload first, index second: until the index lands nothing names the payload, so a put that fails
  // between the two leaves no readable entry (a payload without index expires with the TTL, or stays
  // unreferenced).
  const RedisReply p = client_.command(std::move(set_payload));
  if (p.type != RedisReply::Type::kStatus) return fail();
  const RedisReply i = client_.command(std::move(set_index));
  if (i.type != RedisReply::Type::kString && i.type != RedisReply::Type::kNil) {
    client_.run({{"DEL", pkey}});  // best effort; unreadable either way
    return fail();
  }
  if (i.type == RedisReply::Type::kString)
    if (const auto old = decode_index(i.str, ix.name_hash); old && old->nonce != ix.nonce)
      client_.run({{"DEL", payload_key_of(opt_.prefix, name, old->nonce)}});
  const std::lock_guard lock(mu_);
  st_.bytes_written += written;
  return true;
}

std::optional<std::vector<std::byte>> RedisTier::verify(std::string_view name, const RedisReply& index,
                                                        const RedisReply& payload, bool& corrupt) const {
  corrupt = false;
  if (payload.type != RedisReply::Type::kString) return std::nullopt;  // evicted, expired, unreachable
  const auto ix = decode_index(index.str, name_hash(name));
  auto out = ix ? decode_payload(*ix, payload.str) : std::nullopt;
  corrupt = !out.has_value();
  return out;
}

std::vector<std::optional<std::vector<std::byte>>> RedisTier::get_many(std::span<const std::string> names) {
  for (const std::string& n : names) check_object_name(n);
  const LockedTimer timer(mu_, st_.get_ns);
  std::vector<std::optional<std::vector<std::byte>>> out(names.size());
  std::vector<std::vector<std::string>> gets;
  for (const std::string& n : names) gets.push_back({"GET", index_key(n)});
  const std::vector<RedisReply> indexes = client_.run(gets);
  // Second round: the payloads the readable indexes name.
  std::vector<std::size_t> which;
  std::vector<std::vector<std::string>> payload_gets;
  // Keys of bad objects, deleted (best effort). An index goes only if it still holds the bytes read: a writer
  // may have replaced the object meanwhile (deleting the payload this index named), and its new index must
  // stay. Compare-and-delete is one EVAL (the key is argument 3).
  std::vector<std::vector<std::string>> drop, drop_index;
  const auto drop_index_if = [&](std::size_t i) {
    drop_index.push_back({"EVAL", kDelIfEqual, "1", index_key(names[i]), indexes[i].str});
  };
  std::int64_t corrupt = 0, bytes_read = 0;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (indexes[i].type != RedisReply::Type::kString) continue;  // absent, or no answer
    const auto ix = decode_index(indexes[i].str, name_hash(names[i]));
    if (!ix) {
      ++corrupt;
      drop_index_if(i);
      continue;
    }
    which.push_back(i);
    payload_gets.push_back({"GET", payload_key_of(opt_.prefix, names[i], ix->nonce)});
  }
  const std::vector<RedisReply> payloads =
      payload_gets.empty() ? std::vector<RedisReply>{} : client_.run(payload_gets);
  for (std::size_t k = 0; k < which.size(); ++k) {
    const std::size_t i = which[k];
    bool bad = false;
    out[i] = verify(names[i], indexes[i], payloads[k], bad);
    if (out[i]) {
      bytes_read += static_cast<std::int64_t>(payloads[k].str.size());
    } else if (bad || payloads[k].type == RedisReply::Type::kNil) {
      // Corrupt, truncated or foreign; or an index whose payload is gone (evicted first): never readable.
      corrupt += bad ? 1 : 0;
      drop_index_if(i);
      drop.push_back({"DEL", payload_gets[k][1]});
    }
  }
  if (!drop.empty()) client_.run(drop);
  if (!drop_index.empty()) client_.run(drop_index, 3);
  const std::lock_guard lock(mu_);
  for (const auto& o : out) ++(o ? st_.hits : st_.misses);
  st_.corrupt += corrupt;
  st_.bytes_read += bytes_read;
  return out;
}

std::optional<std::vector<std::byte>> RedisTier::get(std::string_view name) {
  const std::string n(name);
  return std::move(get_many(std::span<const std::string>(&n, 1)).front());
}

bool RedisTier::remove(std::string_view name) {
  const std::string ikey = index_key(name);
  const RedisReply r = client_.command({"GET", ikey});
  std::vector<std::vector<std::string>> dels{{"DEL", ikey}};
  if (r.type == RedisReply::Type::kString)
    if (const auto ix = decode_index(r.str, name_hash(name)))
      dels.push_back({"DEL", payload_key_of(opt_.prefix, name, ix->nonce)});
  const auto res = client_.run(dels);
  return res.front().type == RedisReply::Type::kInteger && res.front().integer == 1;
}

bool RedisTier::contains(std::string_view name) const {
  const RedisReply r = client_.command({"EXISTS", index_key(name)});
  return r.type == RedisReply::Type::kInteger && r.integer == 1;
}

TierStats RedisTier::stats() const {
  const std::lock_guard lock(mu_);
  return st_;
}

}  // namespace redknot
