// Real servers for integration tests, started on loopback with random ports: the local
// S3 server (rclone serve s3 through tools/objstore.py) and the fault-injecting proxy
// (tools/fault_proxy.py). Each is a child process that stops when its object dies.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace ember::testing {

// The repository root (EMBER_SOURCE_DIR, set by CTest).
std::string SourceDir();

// A fresh temporary directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A child process whose stdout's first line is a JSON object (its address). Closing
// its stdin and SIGTERM stop it.
class ChildProcess {
 public:
  explicit ChildProcess(const std::vector<std::string>& argv);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  const nlohmann::json& hello() const { return hello_; }
  bool ok() const { return pid_ > 0 && hello_.is_object(); }

 private:
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  nlohmann::json hello_;
};

class LocalS3 {
 public:
  // Serves `root` (its subdirectories are buckets) with fresh random credentials.
  explicit LocalS3(const std::string& root);
  bool ok() const { return process_.ok(); }
  std::string endpoint() const { return process_.hello().value("endpoint", ""); }
  std::string access_key() const { return process_.hello().value("access_key", ""); }
  std::string secret_key() const { return process_.hello().value("secret_key", ""); }

 private:
  ChildProcess process_;
};

class FaultProxy {
 public:
  FaultProxy(const std::string& upstream, const std::vector<std::string>& fault_flags);
  bool ok() const { return process_.ok(); }
  std::string endpoint() const { return process_.hello().value("endpoint", ""); }

 private:
  ChildProcess process_;
};

// Sets environment variables for the scope, restoring the old values after.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& vars);
  ~ScopedEnv();

 private:
  std::map<std::string, std::pair<bool, std::string>> saved_;
};

// Runs a command to completion; returns its exit status and captures stdout.
int RunCommand(const std::vector<std::string>& argv, std::string* stdout_text = nullptr);

// tools/make_test_model.py OUTDIR ARGS...; true on success.
bool MakeTestModel(const std::string& out_dir, const std::vector<std::string>& args);

std::string ReadFile(const std::string& path);

}  // namespace ember::testing
