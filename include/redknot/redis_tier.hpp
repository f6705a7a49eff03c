// A remote byte tier on a Redis Cluster (target redknot::redis, built where hiredis is found; it defines
// REDKNOT_HAS_REDIS for its users).
//
// RedisClusterClient is the small cluster client the tier needs, on hiredis' synchronous API: it keeps the
// slot map (CLUSTER SLOTS), routes each key by its CRC16 slot ({hash tags} honoured), pipelines a batch of
// commands per node, follows MOVED (map updated, then refreshed) and ASK (ASKING + retry) redirects, and on a
// connection error drops the connection, refreshes the slot map from any node it knows and retries — within
// a bounded number of rounds and a deadline per call. Every connect and every socket read/write has a
// timeout, and past the deadline no further node is asked, so a call returns within about its deadline plus
// one connect and one command timeout (the exchange in flight when the deadline passes).
//
// RedisTier is a KvTier over such a client. An object is two keys sharing the slot of the object's name
// (the name is the hash tag): a payload key, written first, holding a 32-byte envelope (magic "RKTO",
// version, length, XXH3-64 of the payload and of the name, as DiskTier's files) and the bytes, and an index
// key written after it that names the payload's write (a random 64-bit nonce) and repeats its length and
// hash. A get reads the index, then the payload it names, and verifies both: a value that is truncated,
// corrupted, written under another name, or whose index is missing (a failed or partial put) is a miss.
// Because both keys live on one master and Redis replicates a master's writes in order, a replica promoted
// after a failover holds the index only if it holds the payload too. The tier never throws for I/O: an
// unreachable, slow or erroring cluster makes puts return false and gets miss (counted in stats()), with
// one log line to stderr when the cluster stops answering and one when it answers again.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "redknot/tiers.hpp"

struct redisContext;  // hiredis

namespace redknot {

// The CRC16 of the Redis Cluster spec (XMODEM: polynomial 0x1021, initial value 0).
std::uint16_t redis_crc16(std::string_view bytes);
// The cluster slot of a key: CRC16 mod 16384 of the key, or of its hash tag — the bytes between the first
// '{' and the first '}' after it, when there are any.
int redis_key_slot(std::string_view key);

struct RedisClusterOptions {
  std::vector<std::string> seeds;                    // "host:port" of any cluster nodes
  std::chrono::milliseconds connect_timeout{500};    // per connection attempt
  std::chrono::milliseconds command_timeout{1000};   // per socket read / write
  std::chrono::milliseconds request_deadline{3000};  // a whole call, retries included
  int max_rounds = 8;                                // redirect / reconnect rounds per call
  // After a call that no node answered (an outage), later calls fail at once, without a connection attempt,
  // until this much time has passed; then one call tries again (and, failing, starts another wait). Lookups
  // that follow a failed one within the window cost nothing; lookups further apart still wait a deadline
  // each (a growing window and a one-node probe are not done). 0: every call tries.
  std::chrono::milliseconds outage_retry{1000};
};

// One reply, copied out of hiredis. kFailed: no reply (connection refused or lost, timeout, deadline);
// str says why.
struct RedisReply {
  enum class Type { kFailed, kNil, kString, kStatus, kInteger, kError, kArray };
  Type type = Type::kFailed;
  std::string str;
  long long integer = 0;
  std::vector<RedisReply> elements;
  bool ok() const { return type != Type::kFailed && type != Type::kError; }
};

struct RedisClientStats {
  std::int64_t commands = 0;           // commands answered (any reply)
  std::int64_t failed = 0;             // commands given up on (no reply within the rounds / deadline)
  std::int64_t moved = 0;              // MOVED redirects followed
  std::int64_t ask = 0;                // ASK redirects followed
  std::int64_t retries = 0;            // TRYAGAIN / CLUSTERDOWN / LOADING answers retried
  std::int64_t connect_failures = 0;   // connections refused or timed out
  std::int64_t connection_errors = 0;  // connections lost or timed out mid-command
  std::int64_t slot_refreshes = 0;     // slot maps read (CLUSTER SLOTS)
  std::int64_t down_events = 0;  // outages: a call no node answered, after calls that got answers (logged)
  std::int64_t fast_failures =
      0;  // commands failed at once during an outage (outage_retry), counted in failed
};

// Thread safety: calls are serialised by the client's mutex.
class RedisClusterClient {
 public:
  // Tries to read the slot map from the seeds (a cluster that is down now is tried again on each call:
  // never throws for I/O). InvalidArgument for no seeds, a seed that is not "host:port", or bad timeouts.
  explicit RedisClusterClient(RedisClusterOptions opt);
  ~RedisClusterClient();
  RedisClusterClient(const RedisClusterClient&) = delete;
  RedisClusterClient& operator=(const RedisClusterClient&) = delete;

  // One command per element of `commands`, routed by the slot of its `key` argument (the index of the key
  // in each argv: `key_arg`, 1 for GET/SET/DEL/...), pipelined per node. Replies in the order given.
  std::vector<RedisReply> run(const std::vector<std::vector<std::string>>& commands, int key_arg = 1);
  RedisReply command(std::vector<std::string> argv, int key_arg = 1);
  // A command for one node ("host:port"), e.g. CLUSTER INFO; no redirects followed.
  RedisReply command_at(const std::string& node, std::vector<std::string> argv);

  bool refresh_slots();                      // false when no known node answered
  std::string node_of_slot(int slot) const;  // "" when the map has no owner for it
  std::vector<std::string> masters() const;  // "host:port" of the masters in the slot map
  RedisClientStats stats() const;
  const RedisClusterOptions& options() const { return opt_; }

 private:
  redisContext* conn(const std::string& node);
  void drop(const std::string& node);
  bool refresh_locked(std::chrono::steady_clock::time_point deadline);
  bool load_slots_from(const std::string& node);
  void note_reachable(bool reachable, const std::string& why);

  RedisClusterOptions opt_;
  mutable std::mutex mu_;
  std::vector<std::string> nodes_;           // masters of the last slot map, index = owner id
  std::vector<std::string> known_;           // every node ever seen (seeds, masters, replicas)
  std::array<std::int16_t, 16384> owner_{};  // slot -> index into nodes_, -1 unknown
  std::map<std::string, redisContext*> conns_;
  bool have_map_ = false;
  bool down_logged_ = false;
  std::chrono::steady_clock::time_point retry_at_{};  // during an outage: calls before it fail at once
  RedisClientStats st_;
};

struct RedisTierOptions {
  // Every key is "<prefix>:{<object name>}:i" or ":p:<nonce>": a namespace, so that tests, users and models
  // do not collide. 1..64 characters, none of them '{', '}', whitespace or control characters.
  std::string prefix = "redknot";
  std::chrono::milliseconds ttl{0};  // 0: no expiry; else both keys of an object expire after it
  std::int64_t max_object_bytes = std::int64_t{256} << 20;  // larger puts are refused (counted)
};

// The tier's object format as free functions, so that other clients (the Python bindings, for engines on
// redis-py's RedisCluster) write and read exactly what RedisTier does. One object is the payload value at
// redis_payload_key(prefix, name, nonce), written first, and the index value at redis_index_key(prefix, name)
// naming that nonce, written after it; both keys hash to the slot of `name`. Names are checked
// (check_object_name) and prefixes are RedisTierOptions::prefix's rule (InvalidArgument otherwise).
std::string redis_index_key(std::string_view prefix, std::string_view name);
std::string redis_payload_key(std::string_view prefix, std::string_view name, std::uint64_t nonce);
// The payload value and the index value of one write of `bytes` under `name`.
struct RedisObjectValues {
  std::string payload;
  std::string index;
};
RedisObjectValues encode_redis_object(std::string_view name, std::span<const std::byte> bytes,
                                      std::uint64_t nonce);
// The nonce an index value names: nullopt when it is not an intact index of `name`.
std::optional<std::uint64_t> redis_index_nonce(std::string_view name, std::string_view index_value);
// The bytes, when `payload_value` is the intact payload `index_value` names under `name`; nullopt when
// either is truncated, corrupted, of another name or of another write.
std::optional<std::vector<std::byte>> decode_redis_object(std::string_view name,
                                                          std::string_view payload_value,
                                                          std::string_view index_value);

class RedisTier final : public KvTier {
 public:
  // `client` must outlive the tier. InvalidArgument for options check_options rejects.
  RedisTier(RedisClusterClient& client, RedisTierOptions opt = {});
  // The constructor's option checks, for callers that check before they connect a client.
  static void check_options(const RedisTierOptions& opt);
  bool put(std::string_view name, std::span<const std::byte> bytes) override;
  std::optional<std::vector<std::byte>> get(std::string_view name) override;
  bool remove(std::string_view name) override;
  // Whether the object's index key exists (not verified: a get may still miss).
  bool contains(std::string_view name) const override;
  // hits, misses, corrupt, bytes written / read, put failures and get time are counted; capacity, bytes
  // held, objects and evictions are the cluster's (maxmemory, INFO) and stay 0 here.
  TierStats stats() const override;

  // Several objects in two pipelined rounds (indexes, then payloads): nullopt entries are misses.
  std::vector<std::optional<std::vector<std::byte>>> get_many(std::span<const std::string> names);

  std::string index_key(std::string_view name) const;
  // The payload key the index names now ("" when there is no readable index).
  std::string payload_key(std::string_view name) const;
  RedisClusterClient& client() { return client_; }
  const RedisTierOptions& options() const { return opt_; }

 private:
  std::optional<std::vector<std::byte>> verify(std::string_view name, const RedisReply& index,
                                               const RedisReply& payload, bool& corrupt) const;

  RedisClusterClient& client_;
  RedisTierOptions opt_;
  mutable std::mutex mu_;  // stats and the nonce generator
  std::uint64_t nonce_state_;
  TierStats st_;
};

}  // namespace redknot
