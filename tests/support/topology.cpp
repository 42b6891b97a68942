#include "tests/support/topology.hpp"
#include "tests/support/time_scale.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>

namespace understudy::test {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const char* const kScript = US_TOPOLOGY_SCRIPT;

struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// posix_spawn rather than fork: the test process may have threads, and nothing but
// exec may run in a forked child then. The child leads its own process group so that a
// timeout or stop() reaches whatever it started too.
Result<pid_t> spawn_child(const std::vector<std::string>& argv, int out_fd, int err_fd) {
    if (argv.empty()) return make_error(Errc::invalid_input, "spawning a process: empty command");
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    ::posix_spawn_file_actions_init(&fa);
    ::posix_spawnattr_init(&attr);
    ::posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    ::posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    ::posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
    // Test frameworks install signal handlers and may block signals; the child gets
    // the defaults back so SIGTERM and SIGPIPE end it.
    sigset_t none, def;
    ::sigemptyset(&none);
    ::sigemptyset(&def);
    ::sigaddset(&def, SIGPIPE);
    ::sigaddset(&def, SIGTERM);
    ::sigaddset(&def, SIGINT);
    ::posix_spawnattr_setsigmask(&attr, &none);
    ::posix_spawnattr_setsigdefault(&attr, &def);
    ::posix_spawnattr_setpgroup(&attr, 0);
    ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
    ::posix_spawn_file_actions_destroy(&fa);
    ::posix_spawnattr_destroy(&attr);
    if (rc != 0) return sys_error("starting " + argv[0], rc);
    return pid;
}

ProcessOutput status_to_output(int st) {
    ProcessOutput o;
    if (WIFEXITED(st)) o.exit_status = WEXITSTATUS(st);
    else if (WIFSIGNALED(st)) o.signal = WTERMSIG(st);
    return o;
}

std::string joined(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
    return s;
}

Result<ProcessOutput> run_script(const std::vector<std::string>& args, milliseconds timeout) {
    std::vector<std::string> argv{"bash", kScript};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = US_TRY(run_command(argv, timeout));
    if (!r.ok()) return make_error(Errc::system, "topology.sh " + joined(args) + ": " + r.describe());
    return r;
}

} // namespace

const char* host_name(Host h) {
    switch (h) {
    case Host::client: return "client";
    case Host::primary: return "primary";
    case Host::backup: return "backup";
    case Host::sw: return "sw";
    }
    return "?";
}

std::string ProcessOutput::describe() const {
    std::string s = !abandoned.empty() ? "abandoned: " + abandoned : timed_out ? "timed out" : signal ? "killed by signal " + std::to_string(signal)
                                                     : "exit status " + std::to_string(exit_status);
    if (!err.empty()) s += ": " + err;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
}

Result<ProcessOutput> run_command(const std::vector<std::string>& argv, milliseconds timeout, const GoneCheck& gone) {
    int out_p[2], err_p[2];
    if (::pipe2(out_p, O_CLOEXEC) != 0) return sys_error("pipe");
    Fd out_r(out_p[0]), out_w(out_p[1]);
    if (::pipe2(err_p, O_CLOEXEC) != 0) return sys_error("pipe");
    Fd err_r(err_p[0]), err_w(err_p[1]);
    pid_t pid = US_TRY(spawn_child(argv, out_w.fd, err_w.fd));
    ::close(std::exchange(out_w.fd, -1));
    ::close(std::exchange(err_w.fd, -1));

    ProcessOutput result;
    auto deadline = test::deadline_in(timeout);
    // After a kill, a grandchild that left the process group may still hold the pipes:
    // read a little longer, then give up on them.
    auto give_up = Clock::time_point::max();
    pollfd fds[2] = {{out_r.fd, POLLIN, 0}, {err_r.fd, POLLIN, 0}};
    std::string* sinks[2] = {&result.out, &result.err};
    auto ended = [&] { return result.timed_out || !result.abandoned.empty(); };
    while ((fds[0].fd >= 0 || fds[1].fd >= 0) && Clock::now() < give_up) {
        auto now = Clock::now();
        if (!ended() && gone) result.abandoned = gone();
        if (!ended() && now >= deadline) result.timed_out = true;
        if (ended() && give_up == Clock::time_point::max()) {
            ::kill(-pid, SIGKILL);
            give_up = now + std::chrono::seconds(1);
        }
        auto until = ended() ? give_up : gone ? std::min(deadline, now + milliseconds(200)) : deadline;
        int wait_ms = int(std::chrono::duration_cast<milliseconds>(until - now).count()) + 1;
        int n = ::poll(fds, 2, wait_ms);
        if (n < 0 && errno != EINTR) return sys_error("poll");
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[4096];
            ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
            if (got > 0) sinks[i]->append(buf, size_t(got));
            else if (got == 0 || errno != EINTR) fds[i].fd = -1;
        }
    }
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return sys_error("waiting for " + argv[0]);
    auto o = status_to_output(st);
    result.exit_status = o.exit_status;
    result.signal = o.signal;
    return result;
}

// ---- Process ----

Process::Process(Process&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), status_(o.status_), reaped_(o.reaped_) {}

Process& Process::operator=(Process&& o) noexcept {
    if (this != &o) {
        if (pid_ > 0 && !reaped_) (void)stop();
        pid_ = std::exchange(o.pid_, -1);
        status_ = o.status_;
        reaped_ = o.reaped_;
    }
    return *this;
}

Process::~Process() {
    if (pid_ > 0 && !reaped_) (void)stop();
}

Result<Process> Process::spawn(const std::vector<std::string>& argv, const std::string& log_path) {
    const char* path = log_path.empty() ? "/dev/null" : log_path.c_str();
    Fd log(::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (log.fd < 0) return sys_error("opening " + std::string(path));
    return Process(US_TRY(spawn_child(argv, log.fd, log.fd)));
}

bool Process::running() {
    if (pid_ <= 0 || reaped_) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = st;
        reaped_ = true;
    }
    return !reaped_;
}

Result<ProcessOutput> Process::stop(milliseconds grace) {
    if (pid_ <= 0) return make_error(Errc::state, "stopping a process that was never started");
    if (running()) {
        ::kill(-pid_, SIGTERM);
        auto deadline = test::deadline_in(grace);
        while (running() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(10));
        if (!reaped_) {
            ::kill(-pid_, SIGKILL);
            int st = 0;
            while (::waitpid(pid_, &st, 0) < 0)
                if (errno != EINTR) return sys_error("waiting for process " + std::to_string(pid_));
            status_ = st;
            reaped_ = true;
        }
    }
    return status_to_output(status_);
}

// ---- Topology ----

Result<Topology> Topology::create(std::string name) {
    Topology t;
    t.name_ = std::move(name);
    US_TRY(run_script({"up", t.name_}, std::chrono::seconds(60)));
    t.owned_ = true; // from here on, an error return removes it again
    auto st = US_TRY(run_script({"status", t.name_}, std::chrono::seconds(10)));
    std::map<std::string, std::string> kv;
    size_t pos = 0;
    while (pos < st.out.size()) {
        size_t nl = st.out.find('\n', pos);
        if (nl == std::string::npos) nl = st.out.size();
        std::string line = st.out.substr(pos, nl - pos);
        if (auto eq = line.find('='); eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
        pos = nl + 1;
    }
    std::pair<const char*, std::string*> fields[] = {
        {"subnet", &t.subnet_},         {"guest_ip", &t.guest_ip_},     {"client_ip", &t.client_ip_},
        {"primary_ip", &t.primary_ip_}, {"backup_ip", &t.backup_ip_},   {"tap", &t.tap_},
        {"client_if", &t.client_if_},
    };
    for (auto& [key, dst] : fields) {
        auto it = kv.find(key);
        if (it == kv.end() || it->second.empty())
            return make_error(Errc::invalid_input, "topology.sh status " + t.name_ + " gave no " + key);
        *dst = it->second;
    }
    return t;
}

Result<void> Topology::remove(const std::string& name) {
    US_TRY(run_script({"down", name}, std::chrono::seconds(60)));
    return {};
}

Topology::Topology(Topology&& o) noexcept
    : name_(std::move(o.name_)), subnet_(std::move(o.subnet_)), guest_ip_(std::move(o.guest_ip_)),
      client_ip_(std::move(o.client_ip_)), primary_ip_(std::move(o.primary_ip_)),
      backup_ip_(std::move(o.backup_ip_)), tap_(std::move(o.tap_)), client_if_(std::move(o.client_if_)),
      owned_(std::exchange(o.owned_, false)) {}

Topology::~Topology() {
    if (!owned_) return;
    // A destructor cannot return the error; say it where the test log shows it.
    if (auto r = remove(name_); !r) std::fprintf(stderr, "removing topology %s: %s\n", name_.c_str(),
                                                 r.error().describe().c_str());
}

std::string Topology::ns(Host h) const { return name_ + "-" + host_name(h); }

std::string Topology::ip(Host h) const {
    switch (h) {
    case Host::client: return client_ip_;
    case Host::primary: return primary_ip_;
    case Host::backup: return backup_ip_;
    case Host::sw: break;
    }
    return {};
}

std::vector<std::string> Topology::in_ns(Host h, const std::vector<std::string>& argv) const {
    std::vector<std::string> full{"ip", "netns", "exec", ns(h)};
    full.insert(full.end(), argv.begin(), argv.end());
    return full;
}

Result<ProcessOutput> Topology::run_in(Host h, const std::vector<std::string>& argv, milliseconds timeout,
                                       const GoneCheck& gone) const {
    return run_command(in_ns(h, argv), timeout, gone);
}

Result<Process> Topology::spawn_in(Host h, const std::vector<std::string>& argv, const std::string& log_path) const {
    return Process::spawn(in_ns(h, argv), log_path);
}

Result<int> Topology::socket_in(Host h, int domain, int type) const {
    std::string path = "/run/netns/" + ns(h);
    Fd nsfd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (nsfd.fd < 0) return sys_error("opening " + path);
    // setns moves only the calling thread, and a socket stays in the namespace it was
    // made in: a short-lived thread makes it there and the test's threads stay put.
    Result<int> result = make_error(Errc::state, "socket thread did not run");
    std::thread([&] {
        if (::setns(nsfd.fd, CLONE_NEWNET) != 0) {
            result = sys_error("entering " + ns(h));
            return;
        }
        int fd = ::socket(domain, type | SOCK_CLOEXEC, 0);
        result = fd >= 0 ? Result<int>(fd) : Result<int>(sys_error("socket in " + ns(h)));
    }).join();
    return result;
}

std::string topology_name(const std::string& prefix) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
        std::string ns = entry.path().filename();
        const std::string suffix = "-sw";
        if (ns.size() <= prefix.size() + suffix.size() || !ns.starts_with(prefix) || !ns.ends_with(suffix)) continue;
        std::string name = ns.substr(0, ns.size() - suffix.size());
        std::string digits = name.substr(prefix.size());
        if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) continue;
        pid_t pid = pid_t(std::stol(digits));
        if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
        if (auto r = Topology::remove(name); !r)
            std::fprintf(stderr, "removing stale topology %s: %s\n", name.c_str(), r.error().describe().c_str());
    }
    return prefix + std::to_string(::getpid());
}

std::string topology_skip_reason() {
    if (::geteuid() != 0) return "network tests need root (they create network namespaces)";
    auto ip = run_command({"ip", "-V"}, std::chrono::seconds(5));
    if (!ip || !ip->ok()) return "network tests need the ip command (iproute2)";
    int tun = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (tun < 0) return "network tests need /dev/net/tun (tap devices)";
    ::close(tun);
    std::string probe = "us-probe-" + std::to_string(::getpid());
    auto add = run_command({"ip", "netns", "add", probe}, std::chrono::seconds(10));
    if (!add || !add->ok())
        return "network tests need network namespaces: ip netns add failed: " +
               (add ? add->describe() : add.error().describe());
    (void)run_command({"ip", "netns", "del", probe}, std::chrono::seconds(10));
    return {};
}

// ---- Capture ----

Result<Capture> Capture::start(const Topology& topo, Host h, const std::string& iface, std::string file,
                               const std::string& filter) {
    ::unlink(file.c_str());
    std::string log = file + ".log";
    // tcpdump rather than dumpcap: dumpcap drops the packets still in the kernel's ring
    // when it is stopped, and immediate mode (-U writes each packet) makes stop() exact.
    // -Z root: do not drop privileges, the file may be in a directory only root can use.
    std::vector<std::string> argv{"tcpdump", "-Z", "root", "--immediate-mode", "-U", "-q", "-n",
                                  "--time-stamp-precision=nano", "-i", iface, "-w", file};
    if (!filter.empty()) argv.push_back(filter);
    Capture c(US_TRY(topo.spawn_in(h, argv, log)), std::move(file));
    // tcpdump writes the file's header only once the interface is open: from then on
    // every packet is captured.
    auto deadline = test::deadline_in(std::chrono::seconds(10));
    for (;;) {
        struct stat sb {};
        if (::stat(c.file_.c_str(), &sb) == 0 && sb.st_size > 0) return c;
        if (!c.proc_.running())
            return make_error(Errc::unsupported, "tcpdump on " + iface + " in " + topo.ns(h) +
                                                     " exited at once; its output is in " + log);
        if (Clock::now() > deadline)
            return make_error(Errc::timeout, "tcpdump on " + iface + " did not start in 10 s; see " + log);
        std::this_thread::sleep_for(milliseconds(20));
    }
}

Result<void> Capture::stop() {
    if (stopped_) return {};
    stopped_ = true;
    auto r = US_TRY(proc_.stop(std::chrono::seconds(5)));
    // tcpdump exits 0 on SIGTERM after flushing the file.
    if (r.exit_status != 0) return make_error(Errc::system, "tcpdump for " + file_ + " ended badly: " + r.describe());
    return {};
}

Result<std::vector<std::vector<std::string>>> Capture::read(const std::vector<std::string>& fields,
                                                            const std::string& where) {
    US_TRYV(stop());
    std::vector<std::string> argv{"tshark", "-n", "-r", file_, "-T", "fields", "-E", "separator=/t"};
    for (const auto& f : fields) argv.insert(argv.end(), {"-e", f});
    if (!where.empty()) argv.insert(argv.end(), {"-Y", where});
    auto r = US_TRY(run_command(argv, std::chrono::seconds(60)));
    if (!r.ok()) return make_error(Errc::system, "tshark reading " + file_ + ": " + r.describe());
    std::vector<std::vector<std::string>> rows;
    size_t pos = 0;
    while (pos < r.out.size()) {
        size_t nl = r.out.find('\n', pos);
        if (nl == std::string::npos) nl = r.out.size();
        std::vector<std::string> row;
        size_t start = pos;
        for (;;) {
            size_t tab = r.out.find('\t', start);
            if (tab == std::string::npos || tab > nl) tab = nl;
            row.push_back(r.out.substr(start, tab - start));
            if (tab == nl) break;
            start = tab + 1;
        }
        row.resize(fields.size());
        rows.push_back(std::move(row));
        pos = nl + 1;
    }
    return rows;
}

int run_with_scratch_dir(const std::string& prefix, std::string& dir, const std::function<int()>& session) {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
        std::perror("mkdtemp");
        return 1;
    }
    dir = tmpl;
    int failed = session();
    if (failed == 0) std::filesystem::remove_all(dir);
    return failed;
}

} // namespace understudy::test
