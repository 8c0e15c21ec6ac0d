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

std::vector<char*> Argv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const std::string& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

}  // namespace

ChildProcess::ChildProcess(const std::vector<std::string>& argv) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return;
  pid_ = fork();
  if (pid_ == 0) {
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    std::vector<char*> args = Argv(argv);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  stdin_fd_ = in[1];
  // The first line is the JSON hello; wait for it at most 60 s.
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char c;
    const ssize_t n = read(out[0], &c, 1);
    if (n <= 0) break;
    if (c == '\n') break;
    line.push_back(c);
  }
  close(out[0]);
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

LocalS3::LocalS3(const std::string& root, bool etags)
    : process_({"python3", SourceDir() + "/tools/objstore.py", "serve", "--root", root,
                "--etag-hash", etags ? "MD5" : "none"}) {}

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
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    std::vector<char*> args = Argv(argv);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = read(out[0], buffer, sizeof(buffer))) > 0) text.append(buffer, n);
  close(out[0]);
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
