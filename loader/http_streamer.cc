// The network stage of the pipeline: one thread drives curl multi; each connection
// fills one staging slot with one chunk, resuming a broken range where it stopped.
#include "loader/http_streamer.h"

#include <chrono>
#include <cstring>
#include <deque>
#include <random>

#include "absl/strings/str_cat.h"
#include "loader/log.h"

namespace ember::loader {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxErrorBody = 64 << 10;
// A global ceiling on retries across all chunks, so a server that fails every request
// ends the load instead of keeping it alive forever.
constexpr uint64_t kMaxTotalRetries = 2000;

struct Transfer {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  // Current job.
  int job = -1;
  StagingSlot* slot = nullptr;
  uint64_t received = 0;        // bytes of the job already in the slot (kept across retries)
  uint64_t received_at_start = 0;
  int failures_without_progress = 0;
  // Current attempt.
  ResponseMeta meta;
  long status = 0;
  bool status_checked = false;
  std::string error_body;
  absl::Status permanent;  // set by the write callback to abort the attempt
  // Context for callbacks.
  const ObjectInfo* info = nullptr;
  const HttpObject* object = nullptr;
  const ChunkJob* chunk = nullptr;
  StreamCounters* counters = nullptr;
};

struct PendingRetry {
  Clock::time_point ready;
  Transfer* transfer;
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  ParseHeaderLine(absl::string_view(data, size * n), &static_cast<Transfer*>(user)->meta);
  return size * n;
}

// Checks a data response against the object version being loaded, once per attempt.
absl::Status CheckResponse(Transfer& t) {
  const ObjectInfo& info = *t.info;
  const uint64_t want = t.chunk->offset + t.received;
  if (!t.meta.is_range()) {
    // A server that ignores Range sends the whole object: usable only when the
    // chunk is the whole object.
    if (want != 0 || t.chunk->length != info.size) {
      return absl::FailedPreconditionError(
          absl::StrCat(t.object->display, ": the server ignored the Range header (HTTP 200); "
                                          "it must support byte ranges"));
    }
  } else if (*t.meta.range_begin != want) {
    return absl::DataLossError(absl::StrCat(
        t.object->display, ": response Content-Range does not start at byte ", want));
  }
  const std::optional<uint64_t> total = t.meta.object_size();
  const bool size_changed = total && *total != info.size;
  const bool etag_changed = !info.etag.empty() && !t.meta.etag.empty() && t.meta.etag != info.etag;
  const bool date_changed = info.etag.empty() && !info.last_modified.empty() &&
                            !t.meta.last_modified.empty() &&
                            t.meta.last_modified != info.last_modified;
  if (size_changed || etag_changed || date_changed) {
    std::string what;
    if (size_changed) absl::StrAppend(&what, "size ", info.size, " -> ", *total);
    if (etag_changed) absl::StrAppend(&what, what.empty() ? "" : ", ", "ETag ", info.etag, " -> ", t.meta.etag);
    if (date_changed) absl::StrAppend(&what, what.empty() ? "" : ", ", "Last-Modified ", info.last_modified, " -> ", t.meta.last_modified);
    return absl::AbortedError(absl::StrCat(
        t.object->display, ": the object changed during the load (", what,
        "); nothing was loaded: retry once the upload has finished"));
  }
  return absl::OkStatus();
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  Transfer& t = *static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (!t.status_checked) {
    t.status_checked = true;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &t.status);
    if (t.status == 200 || t.status == 206) {
      t.permanent = CheckResponse(t);
      if (!t.permanent.ok()) return 0;  // aborts the transfer
    }
  }
  if (t.status != 200 && t.status != 206) {
    if (t.error_body.size() < kMaxErrorBody) t.error_body.append(data, std::min(bytes, kMaxErrorBody));
    return bytes;
  }
  if (t.received + bytes > t.chunk->length) {
    t.permanent = absl::DataLossError(absl::StrCat(
        t.object->display, ": server sent more bytes than the requested range"));
    return 0;
  }
  std::memcpy(t.slot->data + t.received, data, bytes);
  t.received += bytes;
  StreamCounters& c = *t.counters;
  c.bytes_received.fetch_add(bytes, std::memory_order_relaxed);
  if (c.first_byte_ns.load(std::memory_order_relaxed) == 0) {
    int64_t zero = 0;
    c.first_byte_ns.compare_exchange_strong(
        zero, std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
  }
  return bytes;
}

}  // namespace

absl::Status StreamOverHttp(const std::vector<HttpObject>& objects,
                            const std::vector<ObjectInfo>& infos,
                            const std::vector<ChunkJob>& jobs, StagingRing& ring,
                            const ChunkConsumer& consume, const HttpAuth& auth,
                            const StreamOptions& options, StreamCounters& counters,
                            std::atomic<bool>& cancel) {
  EnsureCurlInitialized();
  const int connections = std::max(1, options.connections);
  CURLM* multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(connections));
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(connections));

  std::vector<Transfer> transfers(connections);
  std::vector<Transfer*> idle;
  for (Transfer& t : transfers) {
    t.easy = curl_easy_init();
    t.counters = &counters;
    idle.push_back(&t);
  }
  std::deque<int> pending;
  for (int i = 0; i < static_cast<int>(jobs.size()); ++i) pending.push_back(i);
  std::vector<PendingRetry> retries;
  std::mt19937_64 rng(std::random_device{}());
  uint64_t total_retries = 0;
  int active = 0;
  absl::Status error;

  auto start_attempt = [&](Transfer& t) {
    const ChunkJob& job = jobs[t.job];
    curl_easy_reset(t.easy);
    curl_slist_free_all(t.headers);
    t.chunk = &job;
    t.info = &infos[job.file];
    t.object = &objects[job.file];
    t.meta = ResponseMeta{};
    t.status = 0;
    t.status_checked = false;
    t.error_body.clear();
    t.permanent = absl::OkStatus();
    t.received_at_start = t.received;
    t.headers = ConfigureEasy(t.easy, *t.object, auth, options.connect_timeout_s);
    const uint64_t first = job.offset + t.received;
    const uint64_t last = job.offset + job.length - 1;
    const std::string range = absl::StrCat(first, "-", last);
    curl_easy_setopt(t.easy, CURLOPT_RANGE, range.c_str());
    curl_easy_setopt(t.easy, CURLOPT_BUFFERSIZE, 512L << 10);
    // A connection that moves no byte for stall_timeout_s is a stall: abort and resume.
    curl_easy_setopt(t.easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(t.easy, CURLOPT_LOW_SPEED_TIME,
                     std::max(1L, static_cast<long>(options.retry.stall_timeout_s)));
    curl_easy_setopt(t.easy, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(t.easy, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(t.easy, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(t.easy, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(t.easy, CURLOPT_PRIVATE, &t);
    curl_multi_add_handle(multi, t.easy);
    ++active;
  };

  while (error.ok()) {
    if (cancel.load()) {
      error = absl::CancelledError("load cancelled");
      break;
    }
    // Start retries whose backoff has passed, then new jobs while connections and
    // staging slots are free.
    const auto now = Clock::now();
    for (size_t i = 0; i < retries.size();) {
      if (retries[i].ready <= now) {
        start_attempt(*retries[i].transfer);
        retries[i] = retries.back();
        retries.pop_back();
      } else {
        ++i;
      }
    }
    while (!pending.empty() && !idle.empty()) {
      StagingSlot* slot = ring.TryAcquire();
      if (!slot) break;
      Transfer* t = idle.back();
      idle.pop_back();
      t->job = pending.front();
      pending.pop_front();
      t->slot = slot;
      t->received = 0;
      t->failures_without_progress = 0;
      start_attempt(*t);
    }
    if (active == 0 && retries.empty() && pending.empty()) break;

    int running = 0;
    curl_multi_perform(multi, &running);
    CURLMsg* msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left)) && error.ok()) {
      if (msg->msg != CURLMSG_DONE) continue;
      Transfer* t;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
      curl_multi_remove_handle(multi, t->easy);
      --active;
      if (!t->status_checked) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
      const CURLcode result = msg->data.result;
      const ChunkJob& job = jobs[t->job];
      if (!t->permanent.ok()) {
        error = t->permanent;
        break;
      }
      const bool data_status = t->status == 200 || t->status == 206;
      if (result == CURLE_OK && data_status && t->received == job.length) {
        consume(job, t->slot);
        t->slot = nullptr;
        t->job = -1;
        idle.push_back(t);
        continue;
      }
      // Failed attempt: transient (retry, resuming) or permanent (stop the load).
      const S3Error s3 = ParseS3Error(t->error_body);
      bool transient;
      std::string why;
      if (result != CURLE_OK) {
        transient = IsTransientCurlError(result);
        why = curl_easy_strerror(result);
      } else if (data_status) {
        transient = true;  // the body ended early
        why = absl::StrCat("response ended after ", t->received, " of ", job.length, " bytes");
      } else {
        transient = IsTransientHttpStatus(t->status, s3.code);
        why = absl::StrCat("HTTP ", t->status, s3.code.empty() ? "" : " ", s3.code);
      }
      if (!transient) {
        error = result != CURLE_OK
                    ? absl::UnavailableError(absl::StrCat(t->object->display, ": ", why))
                    : HttpFailure(*t->object, t->status, s3, "ranged GET");
        break;
      }
      if (t->received > t->received_at_start) t->failures_without_progress = 0;
      ++t->failures_without_progress;
      ++total_retries;
      counters.retries.fetch_add(1);
      if (t->failures_without_progress >= options.retry.max_attempts ||
          total_retries > kMaxTotalRetries) {
        error = absl::UnavailableError(absl::StrCat(
            t->object->display, ": bytes ", job.offset + t->received, "-",
            job.offset + job.length - 1, " still failing after ", t->failures_without_progress,
            " attempts (last: ", why, "); check the server and the network"));
        break;
      }
      double delay = BackoffSeconds(options.retry, t->failures_without_progress, rng);
      if (t->meta.retry_after_s) delay = std::max(delay, std::min(*t->meta.retry_after_s, 30.0));
      LogInfo("loader", "retrying range",
              {{"object", t->object->display},
               {"offset", job.offset + t->received},
               {"reason", why},
               {"attempt", t->failures_without_progress + 1},
               {"delay_s", delay}});
      retries.push_back({Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(delay)),
                         t});
    }
    if (!error.ok()) break;
    // Wake for socket activity, a freed staging slot, or a retry's deadline.
    curl_multi_poll(multi, nullptr, 0, active > 0 ? 20 : 5, nullptr);
  }

  for (Transfer& t : transfers) {
    curl_multi_remove_handle(multi, t.easy);
    curl_easy_cleanup(t.easy);
    curl_slist_free_all(t.headers);
    if (t.slot) ring.Release(t.slot);
  }
  curl_multi_cleanup(multi);
  return error;
}

absl::StatusOr<std::vector<SmallReadResult>> ReadSmallOverHttp(
  const std::vector<SmallRead>& reads, const std::vector<HttpObject>& objects,
  const HttpAuth& auth) {
std::vector<SmallGet> gets;
for (size_t i = 0; i < reads.size(); ++i) {
  SmallGet g{objects[i], std::nullopt};
  if (reads[i].length) g.range = std::make_pair(reads[i].offset, *reads[i].length);
  gets.push_back(std::move(g));
}
auto fetched = GetConcurrently(gets, auth, 8, 10);
if (!fetched.ok()) return fetched.status();
std::vector<HttpResponse>& responses = *fetched;
  std::vector<SmallReadResult> results;
  for (size_t i = 0; i < reads.size(); ++i) {
    HttpResponse& r = responses[i];
    SmallReadResult out;
    out.info.name = reads[i].name;
    if ((r.meta.status == 404 || r.meta.status == 403) && reads[i].optional) {
      // S3 answers 403 instead of 404 for a missing key when the caller may not list.
      out.found = false;
      results.push_back(std::move(out));
      continue;
    }
    if (r.meta.status == 416 && reads[i].length) {
      out.info.size = r.meta.total_size.value_or(0);  // empty object
      results.push_back(std::move(out));
      continue;
    }
    if (r.meta.status != 200 && r.meta.status != 206) {
      return HttpFailure(gets[i].object, r.meta.status, ParseS3Error(r.body),
                         reads[i].length ? "ranged GET" : "GET");
    }
    out.info.size = r.meta.is_range() ? r.meta.total_size.value_or(0) : r.body.size();
    out.info.etag = r.meta.etag;
    out.info.last_modified = r.meta.last_modified;
    out.bytes = std::move(r.body);
    results.push_back(std::move(out));
  }
  return results;
}


}  // namespace ember::loader
