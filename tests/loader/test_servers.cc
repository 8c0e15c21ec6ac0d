// Child-process plumbing for the integration tests' real servers.
#include "tests/loader/test_servers.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ember::testing {

std::string SourceDir() {
  const char* dir = std::getenv("EMBER_SOURCE_DIR");
  return dir ? dir : ".";
}

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "ember-test-XXXXXX").string();
  path_ = mkdtemp(pattern.data());
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

namespace {

// Starts argv with its stdout on a new pipe (and, with `stdin_pipe`, its stdin on
// another); returns the pid (-1 on failure) and the parent's ends of the pipes.
pid_t Spawn(const std::vector<std::string>& argv, int* stdout_read, int* stdin_write = nullptr) {
  int out[2], in[2] = {-1, -1};
  if (pipe2(out, O_CLOEXEC) != 0) return -1;
  if (stdin_write != nullptr && pipe2(in, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return -1;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    if (in[0] >= 0) dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  *stdout_read = out[0];
  if (stdin_write != nullptr) {
    close(in[0]);
    *stdin_write = in[1];
  }
  return pid;
}

}  // namespace

ChildProcess::ChildProcess(const std::vector<std::string>& argv) {
  int out = -1;
  pid_ = Spawn(argv, &out, &stdin_fd_);
  if (pid_ < 0) return;
  // The first line is the JSON hello; wait for it at most 60 s.
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{out, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char c;
    const ssize_t n = read(out, &c, 1);
    if (n <= 0) break;
    if (c == '\n') break;
    line.push_back(c);
  }
  close(out);
  hello_ = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
}

ChildProcess::~ChildProcess() {
  if (stdin_fd_ >= 0) close(stdin_fd_);
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status;
    waitpid(pid_, &status, 0);
  }
}

LocalS3::LocalS3(const std::string& root)
    : process_({"python3", SourceDir() + "/tools/objstore.py", "serve", "--root", root,
                "--etag-hash", "MD5"}) {}

FaultProxy::FaultProxy(const std::string& upstream, const std::vector<std::string>& fault_flags)
    : process_([&] {
        std::vector<std::string> argv = {"python3", SourceDir() + "/tools/fault_proxy.py",
                                         "--upstream", upstream};
        argv.insert(argv.end(), fault_flags.begin(), fault_flags.end());
        return argv;
      }()) {}

ScopedEnv::ScopedEnv(const std::map<std::string, std::string>& vars) {
  for (const auto& [name, value] : vars) {
    const char* old = std::getenv(name.c_str());
    saved_[name] = {old != nullptr, old ? old : ""};
    if (value.empty()) {
      unsetenv(name.c_str());
    } else {
      setenv(name.c_str(), value.c_str(), 1);
    }
  }
}

ScopedEnv::~ScopedEnv() {
  for (const auto& [name, old] : saved_) {
    if (old.first) {
      setenv(name.c_str(), old.second.c_str(), 1);
    } else {
      unsetenv(name.c_str());
    }
  }
}

int RunCommand(const std::vector<std::string>& argv, std::string* stdout_text) {
  int out = -1;
  const pid_t pid = Spawn(argv, &out);
  if (pid < 0) return -1;
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = read(out, buffer, sizeof(buffer))) > 0) text.append(buffer, n);
  close(out);
  int status = 0;
  waitpid(pid, &status, 0);
  if (stdout_text) *stdout_text = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool MakeTestModel(const std::string& out_dir, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"python3", SourceDir() + "/tools/make_test_model.py", out_dir};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string ignored;
  return RunCommand(argv, &ignored) == 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace ember::testing
