// ember-pull: the loader alone. Streams a model from S3, HTTP(S) or a path into host or
// device memory (or a directory), verifies it, and reports throughput and phase timings.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "loader/aws_credentials.h"
#include "loader/cli_args.h"
#include "loader/log.h"
#include "loader/model_loader.h"
#include "loader/peer.h"
#include "loader/progress_bar.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, out, "", "Also write the model's files to this directory, byte-identical to the source");
ABSL_FLAG(std::string, target, "host", "Where tensors go: host, device or none (fetch and discard)");
ABSL_FLAG(int, connections, 8, "Parallel connections (ranged GETs) or pread threads");
ABSL_FLAG(uint64_t, chunk_size, 16ull << 20, "Bytes per ranged GET and per staging slot");
ABSL_FLAG(uint64_t, staging_bytes, 256ull << 20, "Size of the whole staging ring in bytes");
ABSL_FLAG(double, stall_timeout, 30, "Seconds without a byte before a connection counts as stalled and is retried");
ABSL_FLAG(int, max_attempts, 10, "Attempts per range without progress before the load fails");
ABSL_FLAG(bool, json, false, "Print one JSON object with the result on stdout");
ABSL_FLAG(bool, quiet, false, "No progress bar and no log lines below warnings");
ABSL_FLAG(bool, no_sign_request, false, EMBER_NO_SIGN_REQUEST_HELP);
ABSL_FLAG(std::string, peers, "", "Workers to fetch weight ranges from: HOST:PORT or dns:NAME:PORT, comma-separated (the store stays the authority)");
ABSL_FLAG(std::string, peer_token_file, "", "File holding the peers' token (else the EMBER_PEER_TOKEN variable)");

namespace {

constexpr char kUsage[] =
    "ember-pull SOURCE [flags]\n\n"
    "Streams a model (a directory/prefix with config.json, tokenizer.json and safetensors\n"
    "weights, or one .safetensors object) through Ember's loader and reports throughput.\n\n"
    "SOURCE: s3://BUCKET/PREFIX, https://HOST/PATH (a base URL or a presigned .safetensors\n"
    "URL), file://PATH or a plain path.\n"
    EMBER_S3_CREDENTIALS_USAGE
    "HF_TOKEN for the Hugging Face Hub.\n\n"
    "Exit status: 0 after a complete, verified load; 1 when the load failed; 2 for bad usage.";

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = ember::ParseCli(argc, argv, kUsage, "ember_pull_main");
  if (args.size() != 2) {
    std::fprintf(stderr, "ember-pull: expected one SOURCE, got %zu (see --help)\n", args.size() - 1);
    return 2;
  }
  const std::string source = args[1];
  ember::loader::SetS3Anonymous(absl::GetFlag(FLAGS_no_sign_request));
  using ember::loader::Target;
  ember::loader::LoadOptions options;
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target == "host") {
    options.target = Target::kHost;
  } else if (target == "device") {
    options.target = Target::kDevice;
  } else if (target == "none") {
    options.target = Target::kNone;
  } else {
    std::fprintf(stderr, "ember-pull: --target must be host, device or none, not \"%s\"\n", target.c_str());
    return 2;
  }
  options.connections = absl::GetFlag(FLAGS_connections);
  options.chunk_bytes = absl::GetFlag(FLAGS_chunk_size);
  options.staging_bytes = absl::GetFlag(FLAGS_staging_bytes);
  options.retry.stall_timeout_s = absl::GetFlag(FLAGS_stall_timeout);
  options.retry.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  options.mirror_dir = absl::GetFlag(FLAGS_out);
  if (const std::string peers = absl::GetFlag(FLAGS_peers); !peers.empty()) {
    auto list = ember::loader::ParsePeerList(peers);
    auto token = ember::loader::ReadPeerToken(absl::GetFlag(FLAGS_peer_token_file));
    for (const absl::Status& s : {list.status(), token.status()}) {
      if (!s.ok()) {
        std::fprintf(stderr, "ember-pull: %s\n", std::string(s.message()).c_str());
        return 2;
      }
    }
    options.peers = *std::move(list);
    options.peer_token = *std::move(token);
  }
  if (options.connections < 1 || options.connections > 256) {
    std::fprintf(stderr, "ember-pull: --connections must be 1..256, not %d\n", options.connections);
    return 2;
  }
  if (options.chunk_bytes < 4096 || options.staging_bytes < options.chunk_bytes) {
    std::fprintf(stderr, "ember-pull: --chunk_size must be at least 4096 and at most --staging_bytes\n");
    return 2;
  }
  const bool quiet = absl::GetFlag(FLAGS_quiet);
  if (quiet) ember::SetLogLevel(ember::LogLevel::kWarning);

  ember::loader::ProgressBar bar("pull");
  if (!quiet) {
    options.on_progress = [&](const ember::loader::LoadProgress& p) {
      bar.Update(p.bytes_done, p.bytes_total, p.seconds);
    };
  }
  auto model = ember::loader::LoadModel(source, options);
  bar.Finish();
  if (!model.ok()) {
    std::fprintf(stderr, "ember-pull: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const auto& t = model->timings;
  const double gbps = t.total_s > 0 ? static_cast<double>(model->bytes_streamed) / t.total_s / 1e9 : 0;
  const char* where = model->target == Target::kDevice ? "device"
                      : model->target == Target::kHost ? "host"
                                                       : "none";
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out = {
        {"source", model->source},
        {"target", where},
        {"files", model->weight_files.size() + model->files.size()},
        {"tensors", model->weights.size()},
        {"bytes", model->bytes_streamed},
        {"seconds", t.total_s},
        {"gbps", gbps},
        {"staging_bytes", model->staging_bytes},
        {"arena_bytes", model->arena ? model->arena->bytes() : 0},
        {"retries", model->retries},
        {"bytes_from_peers", model->bytes_from_peers},
        {"phases",
         {{"headers_s", t.headers_s},
          {"first_byte_s", t.first_byte_s},
          {"network_done_s", t.network_done_s},
          {"copy_done_s", t.copy_done_s}}},
    };
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << absl::StrFormat(
        "%s: %s in %d tensors (%d weight files) into %s memory in %.2f s: %.2f GB/s\n"
        "  phases: headers %.3f s, first byte %.3f s, network done %.3f s, copies done %.3f s\n"
        "  staging ring %s, retries %d\n",
        model->source, ember::loader::HumanBytes(model->bytes_streamed), model->weights.size(),
        model->weight_files.size(), where, t.total_s, gbps, t.headers_s, t.first_byte_s,
        t.network_done_s, t.copy_done_s, ember::loader::HumanBytes(model->staging_bytes),
        model->retries);
  }
  return 0;
}
