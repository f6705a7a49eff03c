// Byte tiers (include/redknot/tiers.hpp): the LRU index, HostTier, DiskTier and the pack framing.
#include "redknot/tiers.hpp"

#define XXH_INLINE_ALL  // header-only use, as in kv_slice.cpp
#include <xxhash.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <utility>

#include "little_endian.hpp"

namespace redknot {

namespace {

std::uint64_t xxh64(const void* data, std::size_t n) { return XXH3_64bits(data, n); }

// Nanoseconds since `t0`, added to a counter when the scope ends.
class Timer {
 public:
  explicit Timer(std::int64_t& ns) : ns_(ns), t0_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    ns_ +=
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count();
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

 private:
  std::int64_t& ns_;
  std::chrono::steady_clock::time_point t0_;
};

constexpr std::uint32_t kPackMagic = 0x4B504B52u;    // "RKPK"
constexpr std::uint32_t kObjectMagic = 0x4F544B52u;  // "RKTO"
constexpr std::uint32_t kObjectVersion = 1;
constexpr std::size_t kObjectHeader = 32;  // magic, version, payload length, payload hash, name hash
constexpr const char* kSuffix = ".rkt";

bool write_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool pread_all(int fd, std::byte* p, std::size_t n, off_t off) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
    off += r;
  }
  return true;
}

// Closes a descriptor when the scope ends.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  int release() { return std::exchange(fd, -1); }
};

}  // namespace

void check_object_name(std::string_view name) {
  const bool chars_ok = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  require(!name.empty() && name.size() <= 200 && name.front() != '.' && chars_ok, "tier object name '", name,
          "' must be 1..200 characters of [A-Za-z0-9._-], not starting with '.'");
}

// ---- LruIndex

namespace tier_detail {

void LruIndex::insert(const std::string& name, std::int64_t bytes) {
  erase(name);
  order_.push_back(name);
  items_.emplace(name, Item{std::prev(order_.end()), bytes});
  bytes_ += bytes;
}

void LruIndex::touch(const std::string& name) {
  auto it = items_.find(name);
  if (it != items_.end()) order_.splice(order_.end(), order_, it->second.it);
}

std::optional<std::int64_t> LruIndex::erase(const std::string& name) {
  auto it = items_.find(name);
  if (it == items_.end()) return std::nullopt;
  const std::int64_t b = it->second.bytes;
  order_.erase(it->second.it);
  items_.erase(it);
  bytes_ -= b;
  return b;
}

LruTier::LruTier(std::int64_t capacity_bytes, const char* what) {
  require(capacity_bytes >= 0, what, ": capacity_bytes=", capacity_bytes, " must be >= 0");
  st_.capacity_bytes = capacity_bytes;
}

bool LruTier::contains(std::string_view name) const {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  return lru_.contains(std::string(name));
}

TierStats LruTier::stats() const {
  const std::lock_guard lock(mu_);
  TierStats st = st_;
  st.bytes_held = lru_.bytes();
  st.objects = lru_.size();
  return st;
}

}  // namespace tier_detail

// ---- HostTier

HostTier::HostTier(std::int64_t capacity_bytes, KvTier* spill_to)
    : LruTier(capacity_bytes, "HostTier"), spill_to_(spill_to) {
  require(spill_to != this, "HostTier: spill_to is the tier itself");
}

bool HostTier::put(std::string_view name, std::span<const std::byte> bytes) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const auto size = static_cast<std::int64_t>(bytes.size());
  if (size > st_.capacity_bytes) {
    ++st_.put_failures;
    return false;
  }
  const std::string key(name);
  lru_.erase(key);
  data_.erase(key);
  evict_until(size, [&](const std::string& victim) {
    auto it = data_.find(victim);
    if (spill_to_ != nullptr && spill_to_->put(victim, it->second)) {
      ++st_.spilled;
      st_.spilled_bytes += static_cast<std::int64_t>(it->second.size());
    }
    data_.erase(it);
  });
  data_[key].assign(bytes.begin(), bytes.end());
  lru_.insert(key, size);
  st_.bytes_written += size;
  return true;
}

std::optional<std::vector<std::byte>> HostTier::get(std::string_view name) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const Timer timer(st_.get_ns);
  auto it = data_.find(std::string(name));
  if (it == data_.end()) {
    ++st_.misses;
    return std::nullopt;
  }
  lru_.touch(it->first);
  ++st_.hits;
  st_.bytes_read += static_cast<std::int64_t>(it->second.size());
  return it->second;
}

bool HostTier::remove(std::string_view name) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const std::string key(name);
  data_.erase(key);
  return lru_.erase(key).has_value();
}

// ---- DiskTier

DiskTier::DiskTier(std::filesystem::path dir, std::int64_t capacity_bytes, bool create, bool fsync)
    : LruTier(capacity_bytes, "DiskTier"), dir_(std::move(dir)), fsync_(fsync) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir_, ec)) {
    require<NotFound>(create, "DiskTier: directory ", dir_.string(), " does not exist");
    fs::create_directories(dir_, ec);
    require<Unavailable>(!ec, "DiskTier: cannot create directory ", dir_.string(), ": ", ec.message());
  }
  require<Unavailable>(fs::is_directory(dir_, ec), "DiskTier: ", dir_.string(), " is not a directory");
  // Adopt the objects already there, oldest modification first; remove temporaries of interrupted puts.
  std::vector<std::pair<fs::file_time_type, std::pair<std::string, std::int64_t>>> found;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string file = e.path().filename().string();
    if (file.rfind(".tmp.", 0) == 0) {
      fs::remove(e.path(), ec);
      continue;
    }
    const std::size_t n = std::char_traits<char>::length(kSuffix);
    if (!e.is_regular_file(ec) || file.size() <= n || file.compare(file.size() - n, n, kSuffix) != 0)
      continue;
    const std::string name = file.substr(0, file.size() - n);
    try {
      check_object_name(name);
    } catch (const InvalidArgument&) {
      continue;
    }
    found.push_back({e.last_write_time(ec), {name, static_cast<std::int64_t>(e.file_size(ec))}});
  }
  std::sort(found.begin(), found.end());
  for (const auto& [t, obj] : found) lru_.insert(obj.first, obj.second);
  evict_until(0, [&](const std::string& victim) { unlink_object(victim); });
}

std::filesystem::path DiskTier::path_of(std::string_view name) const {
  return dir_ / (std::string(name) + kSuffix);
}

void DiskTier::unlink_object(const std::string& name) const { ::unlink(path_of(name).c_str()); }

bool DiskTier::put(std::string_view name, std::span<const std::byte> bytes) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const auto size = static_cast<std::int64_t>(kObjectHeader + bytes.size());
  const auto fail = [&] {
    ++st_.put_failures;
    return false;
  };
  if (size > st_.capacity_bytes) return fail();
  std::byte header[kObjectHeader];
  le::put<std::uint32_t>(header, kObjectMagic);
  le::put<std::uint32_t>(header + 4, kObjectVersion);
  le::put<std::uint64_t>(header + 8, bytes.size());
  le::put<std::uint64_t>(header + 16, xxh64(bytes.data(), bytes.size()));
  le::put<std::uint64_t>(header + 24, xxh64(name.data(), name.size()));
  const std::filesystem::path tmp =
      dir_ / detail::concat(".tmp.", name, ".", ::getpid(), ".", tmp_counter_++);
  Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
  if (f.fd < 0) return fail();  // read-only or missing directory, no inodes, ...
  bool ok = write_all(f.fd, header, kObjectHeader) && write_all(f.fd, bytes.data(), bytes.size()) &&
            (!fsync_ || ::fsync(f.fd) == 0);
  ok = ::close(f.release()) == 0 && ok;  // a full device may only report at close
  if (!ok || ::rename(tmp.c_str(), path_of(name).c_str()) != 0) {
    ::unlink(tmp.c_str());
    return fail();
  }
  const std::string key(name);
  lru_.erase(key);  // the rename replaced it
  evict_until(size, [&](const std::string& victim) { unlink_object(victim); });
  lru_.insert(key, size);
  st_.bytes_written += size;
  return true;
}

std::optional<std::vector<std::byte>> DiskTier::get(std::string_view name) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const Timer timer(st_.get_ns);
  const std::string key(name);
  const auto miss = [&](bool corrupt) -> std::optional<std::vector<std::byte>> {
    ++st_.misses;
    if (corrupt) {
      ++st_.corrupt;
      unlink_object(key);
    }
    lru_.erase(key);
    return std::nullopt;
  };
  if (!lru_.contains(key)) {
    ++st_.misses;
    return std::nullopt;
  }
  Fd f{::open(path_of(name).c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return miss(errno != ENOENT);  // removed behind our back, or unreadable
  struct stat sb {};
  std::byte header[kObjectHeader];
  if (::fstat(f.fd, &sb) != 0 || sb.st_size < static_cast<off_t>(kObjectHeader) ||
      !pread_all(f.fd, header, kObjectHeader, 0))
    return miss(true);
  const auto len = le::get<std::uint64_t>(header + 8);
  if (le::get<std::uint32_t>(header) != kObjectMagic ||
      le::get<std::uint32_t>(header + 4) != kObjectVersion ||
      len != static_cast<std::uint64_t>(sb.st_size) - kObjectHeader ||
      le::get<std::uint64_t>(header + 24) != xxh64(name.data(), name.size()))
    return miss(true);
  std::vector<std::byte> out(static_cast<std::size_t>(len));
  if (!pread_all(f.fd, out.data(), out.size(), static_cast<off_t>(kObjectHeader)) ||
      le::get<std::uint64_t>(header + 16) != xxh64(out.data(), out.size()))
    return miss(true);
  lru_.touch(key);
  ++st_.hits;
  st_.bytes_read += static_cast<std::int64_t>(sb.st_size);
  return out;
}

bool DiskTier::remove(std::string_view name) {
  check_object_name(name);
  const std::lock_guard lock(mu_);
  const std::string key(name);
  unlink_object(key);
  return lru_.erase(key).has_value();
}

// ---- packs and digests

std::vector<std::byte> pack_slices(std::span<const std::vector<std::byte>> slices) {
  std::size_t total = 8;
  for (const auto& s : slices) total += 8 + s.size();
  std::vector<std::byte> out(total);
  le::put<std::uint32_t>(out.data(), kPackMagic);
  le::put<std::uint32_t>(out.data() + 4, static_cast<std::uint32_t>(slices.size()));
  std::size_t at = 8;
  for (const auto& s : slices) {
    le::put<std::uint64_t>(out.data() + at, s.size());
    std::copy(s.begin(), s.end(), out.begin() + static_cast<std::ptrdiff_t>(at + 8));
    at += 8 + s.size();
  }
  return out;
}

std::optional<std::vector<std::span<const std::byte>>> unpack_slices(std::span<const std::byte> bytes) {
  if (bytes.size() < 8 || le::get<std::uint32_t>(bytes.data()) != kPackMagic) return std::nullopt;
  const std::uint32_t n = le::get<std::uint32_t>(bytes.data() + 4);
  std::vector<std::span<const std::byte>> out;
  std::size_t at = 8;
  for (std::uint32_t i = 0; i < n; ++i) {
    if (bytes.size() - at < 8) return std::nullopt;
    const std::uint64_t len = le::get<std::uint64_t>(bytes.data() + at);
    at += 8;
    if (len > bytes.size() - at) return std::nullopt;
    out.push_back(bytes.subspan(at, static_cast<std::size_t>(len)));
    at += static_cast<std::size_t>(len);
  }
  if (at != bytes.size()) return std::nullopt;
  return out;
}

std::uint64_t object_digest(std::span<const std::byte> bytes) { return xxh64(bytes.data(), bytes.size()); }

void discard_swap(const SwapTicket& ticket, KvTier& hot, KvTier& cold) {
  for (const SwapObject& o : ticket.objects) {
    hot.remove(o.name);  // a hot object may have spilled to the cold tier
    if (&cold != &hot) cold.remove(o.name);
  }
}

}  // namespace redknot

namespace redknot {

TierPrefetcher::TierPrefetcher(int threads) {
  require(threads >= 1 && threads <= 64, "TierPrefetcher: threads=", threads, " must be in [1, 64]");
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

TierPrefetcher::~TierPrefetcher() {
  std::deque<Job> dropped;
  {
    const std::lock_guard lock(mu_);
    stop_ = true;
    dropped.swap(queue_);
  }
  cv_.notify_all();
  for (Job& j : dropped) j.drop();
  for (std::thread& t : workers_) t.join();
}

TierPrefetcher::Read TierPrefetcher::get(KvTier& tier, std::string name) {
  // Shared between the job's two ends; a dropped read answers nullopt, as a miss would.
  auto result = std::make_shared<std::promise<std::optional<std::vector<std::byte>>>>();
  Read r = result->get_future();
  enqueue(Job{[result, tier = &tier, name = std::move(name)] {
                try {
                  result->set_value(tier->get(name));
                } catch (...) {
                  result->set_exception(std::current_exception());
                }
              },
              [result] { result->set_value(std::nullopt); }});
  return r;
}

void TierPrefetcher::enqueue(Job job) {
  {
    const std::lock_guard lock(mu_);
    require(!stop_, "TierPrefetcher: work queued after destruction began");
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void TierPrefetcher::work() {
  for (;;) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping
    Job job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    job.run();  // exceptions go to the job's future
  }
}

}  // namespace redknot
