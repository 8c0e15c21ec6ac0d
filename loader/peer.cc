// Peer fetch: checksums, the served side's reads, and the peer-aware store (see peer.h).
#include "loader/peer.h"

#include <netdb.h>
#include <sys/socket.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "loader/device_memory.h"
#include "loader/http_client.h"
#include "loader/http_streamer.h"
#include "loader/log.h"
#include "loader/model_loader.h"
#include "loader/status_macros.h"
#include "loader/stores.h"

namespace ember::loader {

uint32_t Crc32(const uint8_t* data, uint64_t length, uint32_t crc) {
  while (length > 0) {  // zlib takes 32-bit lengths
    const uInt n = static_cast<uInt>(std::min<uint64_t>(length, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, data, n));
    data += n;
    length -= n;
  }
  return crc;
}

namespace {

uint64_t BlockCount(uint64_t data_start, uint64_t size) {
  return size <= data_start ? 0 : (size - data_start + kPeerBlockBytes - 1) / kPeerBlockBytes;
}

}  // namespace

// --- Checksums ------------------------------------------------------------------------------

BlockDigests::BlockDigests(std::vector<uint64_t> data_start, std::vector<uint64_t> file_size)
    : data_start_(std::move(data_start)), file_size_(std::move(file_size)) {
  pieces_.resize(data_start_.size());
  for (size_t f = 0; f < pieces_.size(); ++f) {
    pieces_[f].resize(BlockCount(data_start_[f], file_size_[f]));
  }
}

void BlockDigests::Add(int file, uint64_t offset, const uint8_t* data, uint64_t length) {
  const uint64_t ds = data_start_[file];
  const uint64_t end = offset + length;
  std::vector<std::pair<uint64_t, Piece>> found;
  for (uint64_t at = std::max(offset, ds); at < end;) {
    const uint64_t block = (at - ds) / kPeerBlockBytes;
    const uint64_t block_begin = ds + block * kPeerBlockBytes;
    const uint64_t piece_end = std::min(end, block_begin + kPeerBlockBytes);
    found.push_back({block, Piece{at - block_begin, piece_end - at,
                                  Crc32(data + (at - offset), piece_end - at)}});
    at = piece_end;
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [block, piece] : found) pieces_[file][block].push_back(piece);
}

absl::StatusOr<std::vector<std::vector<uint32_t>>> BlockDigests::Finish() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::vector<uint32_t>> out(pieces_.size());
  for (size_t f = 0; f < pieces_.size(); ++f) {
    for (size_t b = 0; b < pieces_[f].size(); ++b) {
      std::vector<Piece>& pieces = pieces_[f][b];
      std::sort(pieces.begin(), pieces.end(),
                [](const Piece& x, const Piece& y) { return x.offset < y.offset; });
      const uint64_t want = std::min(kPeerBlockBytes, file_size_[f] - data_start_[f] - b * kPeerBlockBytes);
      uint64_t covered = 0;
      uint32_t crc = 0;
      for (const Piece& p : pieces) {
        if (p.offset != covered) break;
        crc = covered == 0 ? p.crc : static_cast<uint32_t>(crc32_combine(crc, p.crc, p.length));
        covered += p.length;
      }
      if (covered != want) {
        return absl::InternalError(absl::StrCat("checksum block ", b, " of file ", f,
                                                " is not exactly covered by the load"));
      }
      out[f].push_back(crc);
    }
  }
  return out;
}

// --- The manifest ---------------------------------------------------------------------------

nlohmann::json PeerManifestJson(const std::string& source, const std::vector<PeerObject>& objects) {
  nlohmann::json files = nlohmann::json::array();
  for (const PeerObject& o : objects) {
    files.push_back({{"name", o.info.name},
                     {"size", o.info.size},
                     {"etag", o.info.etag},
                     {"last_modified", o.info.last_modified},
                     {"data_start", o.data_start},
                     {"block_crc32", o.block_crc}});
  }
  return {{"source", source}, {"block_bytes", kPeerBlockBytes}, {"objects", files}};
}

absl::StatusOr<std::vector<PeerObject>> ParsePeerManifest(const nlohmann::json& m,
                                                           std::string* source) {
  const auto bad = [](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("the peer's manifest is malformed: ", what));
  };
  // Types are checked before every get: nlohmann throws on a mismatch, and a peer's answer
  // must never take the loader down.
  if (!m.is_object() || !m.contains("source") || !m["source"].is_string()) return bad("no source");
  if (!m.contains("block_bytes") || !m["block_bytes"].is_number_unsigned() ||
      m["block_bytes"].get<uint64_t>() != kPeerBlockBytes) {
    return bad(absl::StrCat("block_bytes is not ", kPeerBlockBytes));
  }
  if (!m.contains("objects") || !m["objects"].is_array()) return bad("no objects");
  *source = m["source"].get<std::string>();
  std::vector<PeerObject> out;
  for (const nlohmann::json& o : m["objects"]) {
    PeerObject p;
    if (!o.is_object() || !o.contains("name") || !o["name"].is_string() ||
        !o.contains("size") || !o["size"].is_number_unsigned() || !o.contains("data_start") ||
        !o["data_start"].is_number_unsigned() || !o.contains("block_crc32") ||
        !o["block_crc32"].is_array()) {
      return bad("an object lacks name, size, data_start or checksums");
    }
    p.info.name = o["name"].get<std::string>();
    p.info.size = o["size"].get<uint64_t>();
    for (auto [field, out] : {std::pair{"etag", &p.info.etag},
                              std::pair{"last_modified", &p.info.last_modified}}) {
      if (!o.contains(field)) continue;
      if (!o[field].is_string()) return bad(absl::StrCat(p.info.name, ": ", field, " is not a string"));
      *out = o[field].get<std::string>();
    }
    p.data_start = o["data_start"].get<uint64_t>();
    if (p.data_start > p.info.size) return bad(absl::StrCat(p.info.name, ": data_start beyond size"));
    for (const nlohmann::json& c : o["block_crc32"]) {
      if (!c.is_number_unsigned() || c.get<uint64_t>() > UINT32_MAX) {
        return bad(absl::StrCat(p.info.name, ": a checksum is not a 32-bit number"));
      }
      p.block_crc.push_back(c.get<uint32_t>());
    }
    if (p.block_crc.size() != BlockCount(p.data_start, p.info.size)) {
      return bad(absl::StrCat(p.info.name, ": ", p.block_crc.size(), " checksums for ",
                              BlockCount(p.data_start, p.info.size), " blocks"));
    }
    out.push_back(std::move(p));
  }
  return out;
}

// --- The served side ------------------------------------------------------------------------

namespace {

std::vector<const SafetensorsHeader*> Pointers(const std::vector<SafetensorsHeader>& headers) {
  std::vector<const SafetensorsHeader*> out;
  for (const SafetensorsHeader& h : headers) out.push_back(&h);
  return out;
}

}  // namespace

ServedModel::ServedModel(std::string source, std::vector<PeerObject> objects,
                         std::vector<SafetensorsHeader> headers, std::vector<std::string> prefixes,
                         std::shared_ptr<const Arena> arena)
    : source_(std::move(source)),
      objects_(std::move(objects)),
      headers_(std::move(headers)),
      prefixes_(std::move(prefixes)),
      plan_(Pointers(headers_)),
      arena_(std::move(arena)) {}

std::shared_ptr<const ServedModel> ServedModel::FromOrigin(
    std::string source, const std::vector<ObjectInfo>& listing) const {
  std::vector<PeerObject> objects = objects_;
  for (PeerObject& o : objects) {
    for (const ObjectInfo& listed : listing) {
      if (listed.name == o.info.name) o.info = listed;
    }
  }
  return std::make_shared<ServedModel>(std::move(source), std::move(objects), headers_, prefixes_,
                                       arena_);
}

int ServedModel::Find(absl::string_view name) const {
  for (size_t i = 0; i < objects_.size(); ++i) {
    if (objects_[i].info.name == name) return static_cast<int>(i);
  }
  return -1;
}

absl::Status ServedModel::Read(int file, uint64_t offset, uint64_t length, uint8_t* out) const {
  const PeerObject& o = objects_[file];
  if (offset > o.info.size || length > o.info.size - offset) {
    return absl::OutOfRangeError(absl::StrCat(o.info.name, ": bytes ", offset, "+", length,
                                              " beyond its ", o.info.size, " bytes"));
  }
  const std::string& prefix = prefixes_[file];
  if (offset < prefix.size()) {
    const uint64_t n = std::min<uint64_t>(length, prefix.size() - offset);
    std::memcpy(out, prefix.data() + offset, n);
  }
  absl::Status status;
  plan_.ForEachPiece(file, offset, length,
                     [&](size_t, uint64_t arena_offset, uint64_t in_range, uint64_t bytes) {
                       if (!status.ok()) return;
                       const uint8_t* src = arena_->data() + arena_offset;
                       if (arena_->on_device()) {
                         status = CopyToHost(out + in_range, src, bytes);
                       } else {
                         std::memcpy(out + in_range, src, bytes);
                       }
                     });
  return status;
}

// --- The fetching side ----------------------------------------------------------------------

absl::StatusOr<std::string> ReadPeerToken(const std::string& file) {
  std::string token;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("peer token file ", file, " cannot be read"));
    std::getline(in, token);
  } else if (const char* env = std::getenv("EMBER_PEER_TOKEN"); env != nullptr) {
    token = env;
  }
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.size() < 16) {
    return absl::InvalidArgumentError(
        "peer serving and fetching need a token of at least 16 characters "
        "(--peer_token_file or EMBER_PEER_TOKEN)");
  }
  return token;
}

absl::StatusOr<std::vector<std::string>> ParsePeerList(absl::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view entry : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    absl::string_view rest = entry;
    absl::ConsumePrefix(&rest, "dns:");
    const size_t colon = rest.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(rest.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "peer \"", entry, "\": expected HOST:PORT or dns:NAME:PORT (e.g. "
          "dns:ember-peers.ember.svc.cluster.local:9400)"));
    }
    out.emplace_back(entry);
  }
  return out;
}

namespace {

// Base URLs ("http://10.0.0.7:9400") of the peer entries, names resolved to every address.
std::vector<std::string> ResolvePeers(const std::vector<std::string>& entries) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& entry : entries) {
    absl::string_view rest = entry;
    const bool dns = absl::ConsumePrefix(&rest, "dns:");
    const size_t colon = rest.rfind(':');
    const std::string host(rest.substr(0, colon)), port(rest.substr(colon + 1));
    std::vector<std::string> hosts;
    if (!dns) {
      hosts.push_back(host);
    } else {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* found = nullptr;
      if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) {
        LogInfo("loader", "peer name does not resolve (no peer is ready yet?)", {{"peer", entry}});
        continue;
      }
      for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
        char text[NI_MAXHOST];
        if (getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof text, nullptr, 0,
                        NI_NUMERICHOST) == 0) {
          hosts.push_back(a->ai_family == AF_INET6 ? absl::StrCat("[", text, "]") : text);
        }
      }
      freeaddrinfo(found);
    }
    for (const std::string& h : hosts) {
      std::string url = absl::StrCat("http://", h, ":", port);
      if (seen.insert(url).second) out.push_back(std::move(url));
    }
  }
  return out;
}

struct Peer {
  std::string base;                 // http://host:port
  std::vector<PeerObject> objects;  // in the order of the load's objects
};

// Why the peer's files are not the version being loaded; empty when they are.
std::string VersionMismatch(const std::vector<PeerObject>& offered, const ObjectInfo& want,
                            PeerObject* match) {
  for (const PeerObject& o : offered) {
    if (o.info.name != want.name) continue;
    if (o.info.size != want.size) {
      return absl::StrCat(want.name, " has ", o.info.size, " bytes there, ", want.size, " in the store");
    }
    if (!want.etag.empty() && o.info.etag != want.etag) {
      return absl::StrCat(want.name, " has ETag \"", o.info.etag, "\" there, \"", want.etag,
                          "\" in the store");
    }
    if (want.etag.empty() && !want.last_modified.empty() &&
        o.info.last_modified != want.last_modified) {
      return absl::StrCat(want.name, " was modified at another time there");
    }
    if (want.etag.empty() && want.last_modified.empty()) {
      return absl::StrCat(want.name, ": the store gives no ETag or Last-Modified to compare");
    }
    *match = o;
    return "";
  }
  return absl::StrCat("it does not hold ", want.name);
}

class PeerStore : public ObjectStore {
 public:
  PeerStore(std::unique_ptr<ObjectStore> origin, PeerOptions options)
      : origin_(std::move(origin)), options_(std::move(options)) {
    auth_.kind = HttpAuth::Kind::kBearer;
    auth_.bearer_token = options_.token;
  }

  std::string Describe(absl::string_view name) const override { return origin_->Describe(name); }
  std::string Root() const override { return origin_->Root(); }
  absl::StatusOr<std::optional<std::vector<ObjectInfo>>> List() override { return origin_->List(); }
  absl::StatusOr<std::vector<SmallReadResult>> ReadSmall(const std::vector<SmallRead>& reads) override {
    return origin_->ReadSmall(reads);
  }

  absl::Status Stream(const std::vector<ObjectInfo>& objects, const std::vector<ChunkJob>& jobs,
                      StagingRing& ring, const ChunkConsumer& consume,
                      const StreamOptions& options, StreamCounters& counters,
                      std::atomic<bool>& cancel) override {
    std::vector<Peer> peers = UsablePeers(objects);
    std::vector<ChunkJob> origin_jobs;
    std::vector<std::vector<ChunkJob>> peer_jobs(peers.size());
    if (!peers.empty() && !Plan(objects, jobs, ring.slot_bytes(), peers[0], options.connections,
                                &origin_jobs, &peer_jobs)) {
      peers.clear();
    }
    if (peers.empty()) return origin_->Stream(objects, jobs, ring, consume, options, counters, cancel);

    struct Source {
      std::atomic<bool> cancel{false};
      std::atomic<bool> done{false};
      absl::Status status;
      std::vector<std::atomic<bool>> received;
      std::string fault;  // why the rest of its ranges went to the store
    };
    std::vector<Source> sources(peers.size() + 1);  // the last is the origin
    std::vector<std::thread> threads;
    for (size_t p = 0; p < peers.size(); ++p) {
      sources[p].received = std::vector<std::atomic<bool>>(peer_jobs[p].size());
      threads.emplace_back([&, p] {
        Source& source = sources[p];
        const std::vector<ChunkJob>& mine = peer_jobs[p];
        std::vector<HttpObject> http;
        for (const ObjectInfo& o : objects) {
          http.push_back({absl::StrCat(peers[p].base, "/v1/peer/objects/", UriEncode(o.name, false)),
                          absl::StrCat("peer ", peers[p].base, " ", o.name)});
        }
        StreamOptions peer_options = options;
        peer_options.retry.max_attempts = 2;
        peer_options.retry.stall_timeout_s = options_.stall_timeout_s;
        peer_options.connect_timeout_s = 2;
        std::mutex fault_mu;
        source.status = StreamOverHttp(
            http, objects, mine, ring,
            [&](const ChunkJob& job, StagingSlot* slot) {
              const std::string bad = Verify(peers[p].objects[job.file], job, slot->data);
              if (!bad.empty()) {
                ring.Release(slot);
                std::lock_guard<std::mutex> lock(fault_mu);
                if (source.fault.empty()) source.fault = bad;
                source.cancel = true;
                return;
              }
              source.received[&job - mine.data()] = true;
              counters.bytes_from_peers.fetch_add(job.length);
              consume(job, slot);
            },
            auth_, peer_options, counters, source.cancel);
        source.done = true;
      });
    }
    Source& from_origin = sources.back();
    threads.emplace_back([&] {
      from_origin.status = origin_->Stream(objects, origin_jobs, ring, consume, options, counters,
                                           from_origin.cancel);
      from_origin.done = true;
    });
    // The load's own cancel reaches every source; a failing origin ends the load.
    for (bool all_done = false; !all_done;) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      all_done = true;
      for (Source& s : sources) all_done = all_done && s.done;
      const bool stop = cancel.load() || (from_origin.done && !from_origin.status.ok());
      if (stop) {
        for (Source& s : sources) s.cancel = true;
      }
    }
    for (std::thread& t : threads) t.join();
    if (cancel.load()) return absl::CancelledError("load cancelled");
    if (!from_origin.status.ok()) return from_origin.status;

    // Every range a peer did not deliver, checked, comes from the store.
    std::vector<ChunkJob> rest;
    for (size_t p = 0; p < peers.size(); ++p) {
      std::vector<ChunkJob> missed;
      for (size_t i = 0; i < peer_jobs[p].size(); ++i) {
        if (!sources[p].received[i]) missed.push_back(peer_jobs[p][i]);
      }
      if (missed.empty()) continue;
      const std::string why = !sources[p].fault.empty() ? sources[p].fault
                              : !sources[p].status.ok() ? std::string(sources[p].status.message())
                                                        : "it stopped";
      LogWarning("loader", "peer failed: its ranges come from the store",
                 {{"peer", peers[p].base}, {"ranges", static_cast<int64_t>(missed.size())},
                  {"reason", why}});
      rest.insert(rest.end(), missed.begin(), missed.end());
    }
    if (rest.empty()) return absl::OkStatus();
    return origin_->Stream(objects, rest, ring, consume, options, counters, cancel);
  }

 private:
  // The peers whose manifest names this source and this version of every object.
  std::vector<Peer> UsablePeers(const std::vector<ObjectInfo>& objects) {
    const std::vector<std::string> bases = ResolvePeers(options_.peers);
    std::vector<std::future<std::pair<std::optional<Peer>, std::string>>> asked;
    for (const std::string& base : bases) {
      asked.push_back(std::async(std::launch::async, [this, base, &objects] {
        return Ask(base, objects);
      }));
    }
    std::vector<Peer> usable;
    for (size_t i = 0; i < asked.size(); ++i) {
      auto [peer, why] = asked[i].get();
      if (peer) {
        usable.push_back(*std::move(peer));
      } else {
        LogInfo("loader", "peer not used", {{"peer", bases[i]}, {"reason", why}});
      }
    }
    if (!usable.empty()) {
      std::vector<std::string> names;
      for (const Peer& p : usable) names.push_back(p.base);
      LogInfo("loader", "fetching from peers", {{"peers", absl::StrJoin(names, ",")}});
    }
    return usable;
  }

  std::pair<std::optional<Peer>, std::string> Ask(const std::string& base,
                                                   const std::vector<ObjectInfo>& objects) {
    const HttpRequest request("GET", base + "/v1/peer/manifest",
                              {"Authorization: Bearer " + options_.token},
                              static_cast<long>(options_.manifest_timeout_s * 1000), /*attempts=*/1);
    absl::StatusOr<HttpReply> reply = Perform(request);
    if (!reply.ok()) return {std::nullopt, std::string(reply.status().message())};
    if (reply->status == 403) return {std::nullopt, "HTTP 403: the peer refused the token"};
    if (reply->status != 200) {
      return {std::nullopt, absl::StrCat("HTTP ", reply->status,
                                         reply->status == 503 ? " (it has not finished loading)" : "")};
    }
    const nlohmann::json json = nlohmann::json::parse(reply->body, nullptr, false);
    std::string source;
    absl::StatusOr<std::vector<PeerObject>> offered = ParsePeerManifest(json, &source);
    if (!offered.ok()) return {std::nullopt, std::string(offered.status().message())};
    if (source != origin_->Root()) return {std::nullopt, absl::StrCat("it serves ", source)};
    Peer peer{base, {}};
    for (const ObjectInfo& want : objects) {
      PeerObject match;
      if (std::string why = VersionMismatch(*offered, want, &match); !why.empty()) {
        return {std::nullopt, absl::StrCat("another version: ", why)};
      }
      peer.objects.push_back(std::move(match));
    }
    return {std::move(peer), ""};
  }

  // Lays the ranges on the checksum grid (data sections in whole blocks, at most a slot
  // each) and stripes them: one in `connections` to the origin, the rest round-robin over the
  // peers; header bytes always from the origin. False when the jobs do not have the shape
  // the loader gives (a contiguous run per file from byte 0 or the data section).
  static bool Plan(const std::vector<ObjectInfo>& objects, const std::vector<ChunkJob>& jobs,
                   uint64_t slot_bytes, const Peer& peer, int connections,
                   std::vector<ChunkJob>* origin_jobs,
                   std::vector<std::vector<ChunkJob>>* peer_jobs) {
    const uint64_t step = slot_bytes / kPeerBlockBytes * kPeerBlockBytes;
    if (step == 0) {
      LogInfo("loader", "peers not used: staging slots are smaller than a checksum block");
      return false;
    }
    std::vector<uint64_t> first(objects.size(), UINT64_MAX), covered(objects.size(), 0);
    for (const ChunkJob& j : jobs) {
      first[j.file] = std::min(first[j.file], j.offset);
      covered[j.file] += j.length;
    }
    const int every = std::max(2, connections);
    size_t next_peer = 0;
    int counter = 0;
    for (size_t f = 0; f < objects.size(); ++f) {
      if (first[f] == UINT64_MAX) continue;
      const uint64_t ds = peer.objects[f].data_start, size = objects[f].size;
      if ((first[f] != 0 && first[f] != ds) || covered[f] != size - first[f]) {
        LogInfo("loader", "peers not used: the load's ranges are not whole files");
        return false;
      }
      for (uint64_t at = first[f]; at < ds; at += slot_bytes) {
        origin_jobs->push_back({static_cast<int>(f), at, std::min(slot_bytes, ds - at)});
      }
      for (uint64_t at = ds; at < size; at += step) {
        const ChunkJob job{static_cast<int>(f), at, std::min(step, size - at)};
        if (++counter % every == 0) {
          origin_jobs->push_back(job);
        } else {
          (*peer_jobs)[next_peer++ % peer_jobs->size()].push_back(job);
        }
      }
    }
    return true;
  }

  // Why a data range from a peer does not match the peer's checksums; empty when it does.
  static std::string Verify(const PeerObject& o, const ChunkJob& job, const uint8_t* data) {
    for (uint64_t at = job.offset; at < job.offset + job.length; at += kPeerBlockBytes) {
      const uint64_t block = (at - o.data_start) / kPeerBlockBytes;
      const uint64_t n = std::min(kPeerBlockBytes, job.offset + job.length - at);
      if (Crc32(data + (at - job.offset), n) != o.block_crc[block]) {
        return absl::StrCat(o.info.name, ": bytes ", at, "-", at + n - 1,
                            " do not match the peer's checksum");
      }
    }
    return "";
  }

  std::unique_ptr<ObjectStore> origin_;
  PeerOptions options_;
  HttpAuth auth_;
};

}  // namespace

std::unique_ptr<ObjectStore> OpenWithPeers(std::unique_ptr<ObjectStore> origin,
                                           PeerOptions options) {
  return std::make_unique<PeerStore>(std::move(origin), std::move(options));
}

}  // namespace ember::loader
