// `understudy drill KIND`: inject one fault into a running, protected pair while a
// verifying RESP client writes through the guest's service, then report what the
// clients saw (docs/cli.md). The measurements follow bench/drill.py: unique keys written
// one request at a time per connection, a key counts only once "+OK" arrived, the outage
// is the longest gap between successful replies, and every acknowledged key is read back
// from whoever serves at the end.

#include "cli/drill_command.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/program_options.hpp>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "cli/control_socket.hpp"
#include "cli/status.hpp"
#include "cli/status_command.hpp"
#include "cli/stop_signals.hpp"
#include "common/unique_fd.hpp"
#include "failover/etcd_arbiter.hpp" // the strict JSON reader
#include "replicator/transport.hpp"     // Endpoint

namespace understudy::cli {

namespace po = boost::program_options;
using failover::etcd_detail::Json;
using Clock = std::chrono::steady_clock;
using std::chrono::duration;
using std::chrono::milliseconds;

namespace {

constexpr int kExitPass = 0, kExitUsage = 2, kExitUnreachable = 3, kExitFailed = 5;
constexpr size_t kMaxReplyLine = 64 * 1024;    // a RESP line longer than this is refused
constexpr int64_t kMaxBulk = 1 << 20;          // our values are decimal counters: far below this
constexpr auto kConnectTimeout = milliseconds(1000);
constexpr auto kReplyTimeout = milliseconds(6000); // a connection silent this long is given up
constexpr auto kStatusTimeout = milliseconds(1000);
constexpr auto kPollEvery = milliseconds(5);
constexpr size_t kReadbackBatch = 100;

enum class Kind { kill_primary, hang_primary, kill_backup, partition, corrupt_link };
constexpr std::array<std::pair<Kind, const char*>, 5> kKinds{{{Kind::kill_primary, "kill-primary"},
                                                              {Kind::hang_primary, "hang-primary"},
                                                              {Kind::kill_backup, "kill-backup"},
                                                              {Kind::partition, "partition"},
                                                              {Kind::corrupt_link, "corrupt-link"}}};
const char* kind_name(Kind k) {
    for (auto [kind, name] : kKinds)
        if (kind == k) return name;
    return "?";
}
bool primary_fails(Kind k) { return k == Kind::kill_primary || k == Kind::hang_primary; }

double unix_now() { return duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// Steady-clock instants as Unix seconds, through one pair read at the start.
struct WallClock {
    Clock::time_point steady0 = Clock::now();
    double unix0 = unix_now();
    double at(Clock::time_point t) const { return unix0 + duration<double>(t - steady0).count(); }
    Clock::time_point steady(double unix_s) const {
        return steady0 + std::chrono::duration_cast<Clock::duration>(duration<double>(unix_s - unix0));
    }
};

// ---------------------------------------------------------------------------------------
// A RESP connection: blocking requests with deadlines; every reply checked.

// The service as HOST:PORT, parsed as the replication endpoints are.
using replicator::Endpoint;

// A reply: a simple string, an error, an integer, a bulk string or nil.
struct Reply {
    char type = 0;    // '+', '-', ':', '$'
    bool nil = false; // "$-1"
    std::string text;
};

class RespConn {
public:
    static Result<RespConn> connect(const Endpoint& to, Clock::time_point deadline) {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        addrinfo* list = nullptr;
        const std::string port = std::to_string(to.port);
        if (int rc = ::getaddrinfo(to.host.c_str(), port.c_str(), &hints, &list); rc != 0)
            return make_error(Errc::invalid_input, "service " + to.str() + ": " + ::gai_strerror(rc));
        Error last{Errc::system, "service " + to.str() + ": no address", 0};
        for (addrinfo* a = list; a; a = a->ai_next) {
            UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
            if (!fd.valid()) continue;
            int one = 1;
            ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
                last = sys_error("connecting to the service " + to.str(), errno);
                continue;
            }
            pollfd p{fd.get(), POLLOUT, 0};
            int left = int(std::max<int64_t>(0, std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count()));
            if (::poll(&p, 1, left) != 1) {
                last = Error{Errc::timeout, "connecting to the service " + to.str() + ": timed out", 0};
                continue;
            }
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                last = sys_error("connecting to the service " + to.str(), err);
                continue;
            }
            ::freeaddrinfo(list);
            return RespConn(std::move(fd));
        }
        ::freeaddrinfo(list);
        return last;
    }

    // Appends one command (an array of bulk strings) to the output; flush() sends it.
    void queue(std::initializer_list<std::string_view> args) {
        out_ += fmt::format("*{}\r\n", args.size());
        for (auto a : args) out_ += fmt::format("${}\r\n{}\r\n", a.size(), a);
    }
    Result<void> flush(Clock::time_point deadline) {
        size_t off = 0;
        while (off < out_.size()) {
            ssize_t n = ::send(fd_.get(), out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += size_t(n);
                continue;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return sys_error("sending to the service", errno);
            US_TRYV(wait(POLLOUT, deadline));
        }
        out_.clear();
        return {};
    }
    // One reply. `stop`, when set, ends the wait early (Errc::state).
    Result<Reply> reply(Clock::time_point deadline, const std::atomic<bool>* stop = nullptr) {
        std::string line = US_TRY(read_line(deadline, stop));
        if (line.empty()) return make_error(Errc::invalid_input, "an empty RESP reply line");
        Reply r;
        r.type = line[0];
        r.text = line.substr(1);
        if (r.type == '+' || r.type == '-' || r.type == ':') return r;
        if (r.type != '$') return make_error(Errc::invalid_input, "an unexpected RESP reply: " + line.substr(0, 40));
        int64_t n = 0;
        auto [end, ec] = std::from_chars(r.text.data(), r.text.data() + r.text.size(), n);
        if (ec != std::errc() || end != r.text.data() + r.text.size() || n < -1 || n > kMaxBulk)
            return make_error(Errc::invalid_input, "a bad RESP bulk length: " + line.substr(0, 40));
        if (n == -1) {
            r.nil = true;
            r.text.clear();
            return r;
        }
        while (buf_.size() < size_t(n) + 2) US_TRYV(fill(deadline, stop));
        if (buf_.compare(size_t(n), 2, "\r\n") != 0) return make_error(Errc::invalid_input, "a RESP bulk string without its CRLF");
        r.text = buf_.substr(0, size_t(n));
        buf_.erase(0, size_t(n) + 2);
        return r;
    }

private:
    explicit RespConn(UniqueFd fd) : fd_(std::move(fd)) {}
    Result<void> wait(short events, Clock::time_point deadline, const std::atomic<bool>* stop = nullptr) {
        for (;;) {
            if (stop && stop->load()) return make_error(Errc::state, "stopped");
            auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
            if (left <= 0) return make_error(Errc::timeout, "no reply from the service in time");
            pollfd p{fd_.get(), events, 0};
            int rc = ::poll(&p, 1, int(std::min<int64_t>(left, 50)));
            if (rc < 0 && errno != EINTR) return sys_error("waiting for the service", errno);
            if (rc > 0) return {};
        }
    }
    Result<void> fill(Clock::time_point deadline, const std::atomic<bool>* stop) {
        US_TRYV(wait(POLLIN, deadline, stop));
        char chunk[16384];
        ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
        if (n == 0) return make_error(Errc::system, "the service closed the connection");
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return {};
            return sys_error("receiving from the service", errno);
        }
        buf_.append(chunk, size_t(n));
        return {};
    }
    Result<std::string> read_line(Clock::time_point deadline, const std::atomic<bool>* stop) {
        for (;;) {
            auto at = buf_.find("\r\n");
            if (at != std::string::npos) {
                std::string line = buf_.substr(0, at);
                buf_.erase(0, at + 2);
                return line;
            }
            if (buf_.size() > kMaxReplyLine) return make_error(Errc::invalid_input, "a RESP reply line longer than 64 KiB");
            US_TRYV(fill(deadline, stop));
        }
    }

    UniqueFd fd_;
    std::string out_, buf_;
};

// ---------------------------------------------------------------------------------------
// The verifying client: one writer thread per connection.

struct ConnStats {
    uint64_t sent = 0, acked = 0, in_doubt = 0, broken = 0, reconnects = 0, connect_failures = 0;
    std::vector<std::string> errors; // the first few
    bool replied = false;
};

class Client {
public:
    Client(Endpoint service, unsigned connections, std::string run_id, milliseconds interval)
        : service_(std::move(service)), run_id_(std::move(run_id)), interval_(interval), stats_(connections) {}

    void start() {
        for (unsigned i = 0; i < stats_.size(); ++i) threads_.emplace_back([this, i] { write_loop(i); });
    }
    void stop() {
        stop_ = true;
        for (auto& t : threads_) t.join();
        threads_.clear();
    }
    // Every connection has had a successful reply (or `deadline` passed, or a stop signal
    // came, which sets `interrupted`: false).
    bool wait_ready(Clock::time_point deadline, bool& interrupted) {
        for (;;) {
            {
                std::lock_guard lock(mu_);
                bool all = true;
                for (const auto& s : stats_) all = all && s.replied;
                if (all) return true;
            }
            if (Clock::now() >= deadline) return false;
            if (take_stop_signal(milliseconds(20)) != 0) {
                interrupted = true;
                return false;
            }
        }
    }
    // The first successful reply after `t`, if one came.
    std::optional<Clock::time_point> reply_after(Clock::time_point t) const {
        std::lock_guard lock(mu_);
        std::optional<Clock::time_point> first;
        for (auto r : replies_)
            if (r > t && (!first || r < *first)) first = r;
        return first;
    }
    std::vector<Clock::time_point> replies() const {
        std::lock_guard lock(mu_);
        auto r = replies_;
        std::sort(r.begin(), r.end());
        return r;
    }
    std::map<std::string, std::string> acknowledged() const {
        std::lock_guard lock(mu_);
        return acked_;
    }
    std::vector<ConnStats> stats() const {
        std::lock_guard lock(mu_);
        return stats_;
    }

private:
    void note_error(unsigned ci, const std::string& what) {
        std::lock_guard lock(mu_);
        if (stats_[ci].errors.size() < 3) stats_[ci].errors.push_back(fmt::format("{:.3f} {}", unix_now(), what));
    }
    void write_loop(unsigned ci) {
        std::optional<RespConn> conn;
        uint64_t seq = 0;
        auto backoff = milliseconds(25);
        bool connected_once = false;
        while (!stop_) {
            if (!conn) {
                auto c = RespConn::connect(service_, Clock::now() + kConnectTimeout);
                if (!c) {
                    {
                        std::lock_guard lock(mu_);
                        ++stats_[ci].connect_failures;
                    }
                    note_error(ci, c.error().describe());
                    std::this_thread::sleep_for(backoff);
                    backoff = std::min(backoff * 2, milliseconds(400));
                    continue;
                }
                conn.emplace(std::move(*c));
                if (connected_once) {
                    std::lock_guard lock(mu_);
                    ++stats_[ci].reconnects;
                }
                connected_once = true;
            }
            ++seq;
            std::string key = fmt::format("drill:{}:{}:{}", run_id_, ci, seq), value = std::to_string(seq);
            conn->queue({"SET", key, value});
            auto deadline = Clock::now() + kReplyTimeout;
            Result<Reply> r = make_error(Errc::state, "");
            if (auto sent = conn->flush(deadline); sent) r = conn->reply(deadline, &stop_);
            else r = std::move(sent.error());
            if (!r && r.error().code == Errc::state) break; // stopped while waiting: neither acknowledged nor lost
            if (record(ci, std::move(key), std::move(value), r, Clock::now())) {
                backoff = milliseconds(25);
                if (interval_.count() > 0) std::this_thread::sleep_for(interval_);
                continue;
            }
            if (r) continue; // the service answered something else: recorded, the connection goes on
            conn.reset();    // a broken connection: reconnect after a short back-off
            std::this_thread::sleep_for(backoff);
            backoff = std::min(backoff * 2, milliseconds(400));
        }
    }
    // One request's outcome; true when it was acknowledged.
    bool record(unsigned ci, std::string key, std::string value, const Result<Reply>& r, Clock::time_point t) {
        std::lock_guard lock(mu_);
        ConnStats& st = stats_[ci];
        ++st.sent;
        if (r && r->type == '+' && r->text == "OK") {
            ++st.acked;
            st.replied = true;
            acked_[std::move(key)] = std::move(value);
            replies_.push_back(t);
            return true;
        }
        ++st.in_doubt; // sent, never acknowledged: counted neither way
        if (!r) ++st.broken; // the connection is given up (a reply that is not +OK keeps it)
        if (st.errors.size() < 3)
            st.errors.push_back(r ? fmt::format("{:.3f} unexpected reply {}{}", unix_now(), r->type, r->text.substr(0, 60))
                                  : fmt::format("{:.3f} {}", unix_now(), r.error().describe()));
        return false;
    }

    Endpoint service_;
    std::string run_id_;
    milliseconds interval_; // between a reply and the connection's next SET
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    std::vector<ConnStats> stats_;
    std::vector<Clock::time_point> replies_;   // successful replies, every connection
    std::map<std::string, std::string> acked_; // key -> value, once "+OK" arrived
    std::vector<std::thread> threads_;
};

struct Readback {
    uint64_t missing = 0, wrong = 0;
    std::vector<std::string> examples;
    std::optional<std::string> error; // the read-back could not finish: nothing verified
};

// GETs every acknowledged key (pipelined in batches) from whoever serves now; retries a
// broken attempt from the start until `deadline`.
Readback read_back(const Endpoint& service, const std::map<std::string, std::string>& acked, Clock::time_point deadline) {
    Readback out;
    for (;;) {
        Readback rb;
        auto attempt = [&]() -> Result<void> {
            auto c = US_TRY(RespConn::connect(service, std::min(deadline, Clock::now() + kConnectTimeout)));
            auto it = acked.begin();
            while (it != acked.end()) {
                auto first = it;
                size_t n = 0;
                for (; it != acked.end() && n < kReadbackBatch; ++it, ++n) c.queue({"GET", it->first});
                US_TRYV(c.flush(deadline));
                for (auto k = first; k != it; ++k) {
                    Reply r = US_TRY(c.reply(deadline));
                    if (r.type == '-') return make_error(Errc::invalid_input, "GET " + k->first + " answered -" + r.text.substr(0, 60));
                    if (r.type != '$') return make_error(Errc::invalid_input, "GET " + k->first + " answered a non-string");
                    if (r.nil || r.text != k->second) {
                        ++(r.nil ? rb.missing : rb.wrong);
                        if (rb.examples.size() < 5) rb.examples.push_back(k->first + (r.nil ? " missing" : " wrong: " + r.text.substr(0, 20)));
                    }
                }
            }
            return {};
        };
        auto r = attempt();
        if (r) return rb;
        out.error = r.error().describe();
        if (Clock::now() + milliseconds(200) >= deadline) return out;
        std::this_thread::sleep_for(milliseconds(200));
    }
}

// ---------------------------------------------------------------------------------------
// Watching both instances from the fault on.

struct Observed {
    // First poll (steady time) at which each was seen.
    std::optional<Clock::time_point> backup_promoting, backup_active, backup_waiting, primary_unprotected,
        primary_unreachable, backup_unreachable;
    std::optional<StatusSnapshot> backup_last, primary_last;
};

class Monitor {
public:
    Monitor(std::string primary_socket, std::string backup_socket, bool poll_primary, bool poll_backup)
        : primary_(std::move(primary_socket)), backup_(std::move(backup_socket)), poll_primary_(poll_primary),
          poll_backup_(poll_backup) {}
    void start() {
        thread_ = std::thread([this] { run(); });
    }
    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    Observed observed() const {
        std::lock_guard lock(mu_);
        return seen_;
    }

private:
    // The first time each condition was seen.
    static void mark(std::optional<Clock::time_point>& slot, bool seen, Clock::time_point t) {
        if (seen && !slot) slot = t;
    }
    void run() {
        while (!stop_) {
            auto next = Clock::now() + kPollEvery;
            if (poll_backup_) {
                auto s = fetch_status(backup_, kStatusTimeout);
                auto t = Clock::now();
                std::lock_guard lock(mu_);
                mark(seen_.backup_unreachable, !s, t);
                if (s) {
                    mark(seen_.backup_promoting, s->state == ProtectionState::promoting || s->promoted, t);
                    mark(seen_.backup_active, s->promoted && s->active_primary, t);
                    mark(seen_.backup_waiting, s->role == Role::backup && s->state == ProtectionState::waiting, t);
                    seen_.backup_last = std::move(*s);
                }
            }
            if (poll_primary_) {
                auto s = fetch_status(primary_, kStatusTimeout);
                auto t = Clock::now();
                std::lock_guard lock(mu_);
                mark(seen_.primary_unreachable, !s, t);
                if (s) {
                    mark(seen_.primary_unprotected, s->state == ProtectionState::unprotected, t);
                    seen_.primary_last = std::move(*s);
                }
            }
            std::this_thread::sleep_until(next);
        }
    }

    std::string primary_, backup_;
    bool poll_primary_, poll_backup_;
    std::atomic<bool> stop_{false};
    mutable std::mutex mu_;
    Observed seen_;
    std::thread thread_;
};

// ---------------------------------------------------------------------------------------
// Fault injection.

// Runs CMD with /bin/sh -c, its output on our stderr (stdout may carry the JSON report),
// for at most `limit`; its exit status 0 or why not.
Result<void> run_shell(const std::string& cmd, std::chrono::seconds limit) {
    pid_t pid = ::fork();
    if (pid < 0) return sys_error("fork", errno);
    if (pid == 0) {
        ::dup2(STDERR_FILENO, STDOUT_FILENO);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr); // the command must not inherit our blocked stop signals
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    auto deadline = Clock::now() + limit;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
            if (WIFEXITED(status)) return make_error(Errc::system, fmt::format("`{}` exited with status {}", cmd, WEXITSTATUS(status)));
            return make_error(Errc::system, fmt::format("`{}` ended by signal {}", cmd, WTERMSIG(status)));
        }
        if (r < 0 && errno != EINTR) return sys_error("waiting for `" + cmd + "`", errno);
        if (Clock::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return make_error(Errc::timeout, fmt::format("`{}` did not finish within {} s (killed)", cmd, limit.count()));
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
}

// Sends {"cmd":"drill","fault":"corrupt-link"} to the primary; the Unix time of the flip.
Result<double> corrupt_link(const std::string& primary_socket) {
    auto doc = US_TRY(control_action(primary_socket, R"({"cmd":"drill","fault":"corrupt-link"})", milliseconds(5000)));
    const Json* t = doc.find("flipped_unix_s");
    double v = 0;
    if (!t || t->kind != Json::Kind::number ||
        std::from_chars(t->text.data(), t->text.data() + t->text.size(), v).ec != std::errc() || !std::isfinite(v))
        return make_error(Errc::invalid_input, "the primary's answer has no \"flipped_unix_s\" number");
    return v;
}

// ---------------------------------------------------------------------------------------
// The report.

struct Report {
    Kind kind = Kind::kill_primary;
    std::string fault; // what was done, for people
    double fault_unix_s = 0;
    std::optional<double> detection_ms, promotion_ms, outage_ms;
    std::string detection_source;
    uint64_t acknowledged = 0, lost = 0, missing = 0, wrong = 0, in_doubt = 0;
    std::optional<std::string> readback_error;
    std::vector<std::string> lost_examples;
    unsigned connections = 0;
    uint64_t broken = 0, reconnects = 0; // connections given up; re-opened
    bool connections_survived = true;
    std::string survivor;        // "primary", "backup" or "none"
    std::string survivor_socket; // its control socket
    std::string survivor_state;  // role, state (reason)
    bool pass = false;
    std::vector<std::string> reasons; // why not pass
    std::vector<std::string> notes;
};

std::string ms_text(std::optional<double> v) { return v ? fmt::format("{:.1f} ms", *v) : std::string("-"); }

std::string iso_utc(double unix_s) {
    std::time_t secs = std::time_t(std::floor(unix_s));
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    return fmt::format("{}.{:03d}Z", buf, int((unix_s - double(secs)) * 1000));
}

std::string report_json(const Report& r) {
    JsonWriter w;
    w.begin_object()
        .string("kind", kind_name(r.kind))
        .string("fault", r.fault)
        .number("fault_unix_s", r.fault_unix_s)
        .number("detection_ms", r.detection_ms)
        .number("promotion_ms", r.promotion_ms)
        .string("detection_source", r.detection_source)
        .number("outage_ms", r.outage_ms)
        .integer("writes_acknowledged", r.acknowledged)
        .integer("writes_lost", r.lost)
        .integer("writes_missing", r.missing)
        .integer("writes_wrong", r.wrong)
        .integer("writes_in_doubt", r.in_doubt);
    if (r.readback_error) w.string("readback_error", *r.readback_error);
    else w.null("readback_error");
    w.integer("connections", uint64_t(r.connections))
        .integer("connections_broken", r.broken)
        .integer("reconnects", r.reconnects)
        .boolean("connections_survived", r.connections_survived)
        .string("survivor", r.survivor)
        .string("survivor_socket", r.survivor_socket)
        .string("survivor_state", r.survivor_state)
        .string("verdict", r.pass ? "pass" : "fail");
    std::string reasons = "[", notes = "[";
    for (const auto& s : r.reasons) reasons += (reasons.size() > 1 ? "," : "") + failover::etcd_detail::json_quote(s);
    for (const auto& s : r.notes) notes += (notes.size() > 1 ? "," : "") + failover::etcd_detail::json_quote(s);
    w.raw("reasons", reasons + "]").raw("notes", notes + "]");
    w.end_object();
    return w.str();
}

std::string report_text(const Report& r) {
    std::string out = fmt::format("drill {}: {}\n", kind_name(r.kind), r.pass ? "PASS" : "FAIL");
    auto line = [&](const char* k, const std::string& v) { out += fmt::format("  {:<13}{}\n", k, v); };
    line("fault", fmt::format("{} at {}", r.fault, iso_utc(r.fault_unix_s)));
    line("detection", ms_text(r.detection_ms) + (r.detection_ms ? " (" + r.detection_source + ")" : ""));
    line("promotion", ms_text(r.promotion_ms) + (r.promotion_ms ? " (detected -> the promoted VM runs)" : ""));
    line("outage", ms_text(r.outage_ms) + (r.outage_ms ? " (longest gap between successful replies)" : ""));
    line("writes", fmt::format("{} acknowledged, {} lost{}", r.acknowledged, r.lost,
                               r.readback_error ? " (read-back failed: " + *r.readback_error + ")"
                                                : r.lost ? fmt::format(" ({} missing, {} wrong)", r.missing, r.wrong)
                                                         : std::string(" (every one read back)")));
    line("connections", fmt::format("{} {}", r.connections,
                                    r.connections_survived ? "survived (no reconnect)"
                                                           : fmt::format("did not all survive ({} broken, {} reconnects)", r.broken, r.reconnects)));
    line("survivor", r.survivor == "none" ? std::string("none") : fmt::format("{} ({}): {}", r.survivor, r.survivor_socket, r.survivor_state));
    for (const auto& s : r.reasons) line("FAILED", s);
    for (const auto& s : r.notes) line("note", s);
    return out;
}

std::string state_text(const StatusSnapshot& s) {
    return fmt::format("{}{}, {}{}", role_name(s.role), s.promoted ? " (promoted)" : "", state_name(s.state),
                       s.reason.empty() ? "" : " (" + s.reason + ")");
}

// Waits `d`, or less when SIGINT/SIGTERM arrives (then `interrupted` is set): a drill
// stopped by the operator still cleans up (a stopped primary killed, a cut healed).
void wait_or_stop(duration<double> d, bool& interrupted) {
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(d);
    while (!interrupted) {
        auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
        if (left.count() <= 0) return;
        if (take_stop_signal(std::min(left, milliseconds(10))) != 0) interrupted = true;
    }
}

// Why the pair is not in the state a drill starts from, if it is not.
std::optional<std::string> not_ready(const StatusSnapshot& primary, const std::string& primary_socket,
                                     const StatusSnapshot& backup, const std::string& backup_socket) {
    if (primary.role != Role::primary || !primary.active_primary || primary.state != ProtectionState::protected_)
        return fmt::format("{} is not an active, protected primary ({}); a drill starts from a protected pair",
                           primary_socket, state_text(primary));
    if (backup.role != Role::backup) return fmt::format("{} is not a backup ({})", backup_socket, state_text(backup));
    if (backup.state != ProtectionState::receiving)
        return fmt::format("the backup {} receives no checkpoints ({})", backup_socket, state_text(backup));
    return std::nullopt;
}

std::string random_run_id() {
    std::random_device rd;
    return fmt::format("{:08x}{:08x}", rd(), rd());
}

} // namespace

// ---------------------------------------------------------------------------------------

int drill_command(const std::vector<std::string>& args) {
    std::string kind_text, primary_socket, backup_socket, service_text, partition_cmd, heal_cmd;
    unsigned connections = 4, interval_ms = 5;
    double warmup = 2, after = 5, wait_limit = 30;
    bool json = false;
    po::options_description desc("Options");
    desc.add_options()("help,h", "show this help")
        ("kind", po::value(&kind_text)->required(), "kill-primary | hang-primary | kill-backup | partition | corrupt-link")
        ("primary-socket", po::value(&primary_socket)->required(), "the primary's --control-socket")
        ("backup-socket", po::value(&backup_socket)->required(), "the backup's --control-socket")
        ("service", po::value(&service_text)->required(), "the guest's RESP service, HOST:PORT, as clients reach it")
        ("connections", po::value(&connections)->default_value(4), "client connections writing (1..64)")
        ("interval-ms", po::value(&interval_ms)->default_value(5),
         "pause between a reply and the connection's next write (0..1000; 0: as fast as the service answers)")
        ("warmup", po::value(&warmup)->default_value(2), "seconds of writes before the fault (0..600)")
        ("after", po::value(&after)->default_value(5), "seconds of writes after the survivor serves again (0..600)")
        ("timeout", po::value(&wait_limit)->default_value(30),
         "seconds to wait for the pair to react to the fault and serve again (1..600)")
        ("partition-command", po::value(&partition_cmd), "partition: the shell command that cuts primary <-> backup")
        ("heal-command", po::value(&heal_cmd), "partition: the shell command that heals the cut, run after the read-back")
        ("json", po::bool_switch(&json), "print one JSON object instead of the table");
    po::positional_options_description pos;
    pos.add("kind", 1);
    const char* usage =
        "usage: understudy drill KIND --primary-socket P --backup-socket B --service HOST:PORT [options]\n"
        "  KIND: kill-primary | hang-primary | kill-backup | partition | corrupt-link.\n"
        "  Injects one fault into a running, protected pair while a client writes unique keys through\n"
        "  the guest's RESP service, then reads every acknowledged key back and reports detection,\n"
        "  promotion, the client-observed outage, writes lost and whether connections survived.\n"
        "  The signal kinds need the process on this host; partition needs --partition-command.\n"
        "  Exit codes: 0 the drill passed, 2 bad usage or the pair is not ready for a drill,\n"
        "  3 a socket, the service or the fault could not be reached or injected, 5 the drill failed.";
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
        if (vm.count("help")) {
            std::cout << usage << "\n" << desc << "\n";
            return kExitPass;
        }
        if (!vm.count("kind")) {
            std::fprintf(stderr, "understudy drill: missing KIND (one of kill-primary, hang-primary, kill-backup, partition, "
                                 "corrupt-link); see 'understudy drill --help'\n");
            return kExitUsage;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        std::fprintf(stderr, "understudy drill: %s; see 'understudy drill --help'\n", e.what());
        return kExitUsage;
    }
    auto usage_error = [](const std::string& what) {
        std::fprintf(stderr, "understudy drill: %s\n", what.c_str());
        return kExitUsage;
    };
    std::optional<Kind> kind;
    for (auto [k, name] : kKinds)
        if (kind_text == name) kind = k;
    if (!kind)
        return usage_error("unknown KIND '" + kind_text.substr(0, 64) +
                           "' (one of kill-primary, hang-primary, kill-backup, partition, corrupt-link)");
    if (*kind == Kind::partition && partition_cmd.empty())
        return usage_error("partition needs --partition-command CMD (the command that cuts primary <-> backup here)");
    if (*kind != Kind::partition && (!partition_cmd.empty() || !heal_cmd.empty()))
        return usage_error("--partition-command and --heal-command are for KIND partition only");
    if (connections < 1 || connections > 64) return usage_error("--connections must be between 1 and 64");
    if (interval_ms > 1000) return usage_error("--interval-ms must be between 0 and 1000");
    for (auto [name, v, lo] : {std::tuple{"--warmup", warmup, 0.0}, {"--after", after, 0.0}, {"--timeout", wait_limit, 1.0}})
        if (!std::isfinite(v) || v < lo || v > 600) return usage_error(fmt::format("{} must be between {:g} and 600 seconds", name, lo));
    auto service = Endpoint::parse(service_text);
    if (!service || service->port == 0) return usage_error("--service must be HOST:PORT (a port 1..65535), not '" + service_text.substr(0, 100) + "'");
    if (primary_socket == backup_socket) return usage_error("--primary-socket and --backup-socket are the same socket");

    // 1. Both instances answer, in the state a drill starts from: checked now, and again
    // after the warmup (a pair that lost protection meanwhile would fail the drill for a
    // reason that is not the fault's). An exit code if not.
    std::optional<StatusSnapshot> primary, backup;
    auto check_pair = [&](const std::string& when) -> std::optional<int> {
        for (auto [who, path, into] : {std::tuple{"primary", &primary_socket, &primary}, {"backup", &backup_socket, &backup}}) {
            auto s = fetch_status(*path, milliseconds(5000));
            if (!s) {
                std::fprintf(stderr, "understudy drill: %sthe %s (%s): %s\n", when.c_str(), who, path->c_str(),
                             s.error().describe().c_str());
                return kExitUnreachable;
            }
            *into = std::move(*s);
        }
        if (auto why = not_ready(*primary, primary_socket, *backup, backup_socket)) return usage_error(when + *why);
        return std::nullopt;
    };
    if (auto code = check_pair("")) return *code;
    // The signal kinds act on a process of this host.
    const bool signals_primary = primary_fails(*kind), signals_backup = *kind == Kind::kill_backup;
    const pid_t target_pid = pid_t(signals_primary ? primary->pid : backup->pid);
    if (signals_primary || signals_backup) {
        const char* who = signals_primary ? "primary" : "backup";
        if (target_pid <= 1) return usage_error(fmt::format("the {}'s status names no usable pid ({})", who, target_pid));
        if (::kill(target_pid, 0) != 0) {
            if (errno == ESRCH)
                return usage_error(fmt::format("the {} (pid {}) is not a process of this host: {} signals it, so run the "
                                               "drill on the {}'s host", who, target_pid, kind_name(*kind), who));
            std::fprintf(stderr, "understudy drill: may not signal the %s (pid %d): %s\n", who, int(target_pid), std::strerror(errno));
            return kExitUnreachable;
        }
    }

    // 2. The verifying client.
    auto say = [json](const std::string& s) {
        if (!json) std::fprintf(stderr, "drill: %s\n", s.c_str());
    };
    WallClock wall;
    const std::string run_id = random_run_id();
    Client client(*service, connections, run_id, milliseconds(interval_ms));
    say(fmt::format("writing drill:{}:* through {} on {} connections", run_id, service_text, connections));
    client.start();
    bool interrupted = false;
    auto stopped_before_fault = [&] {
        client.stop();
        std::fprintf(stderr, "understudy drill: interrupted before the fault; nothing was injected\n");
        return kExitFailed;
    };
    if (!client.wait_ready(Clock::now() + std::chrono::seconds(10), interrupted)) {
        if (interrupted) return stopped_before_fault();
        client.stop();
        std::fprintf(stderr, "understudy drill: the service at %s did not answer every connection within 10 s%s\n",
                     service_text.c_str(), client.stats().empty() || client.stats()[0].errors.empty() ? ""
                                                   : (" (" + client.stats()[0].errors[0] + ")").c_str());
        return kExitUnreachable;
    }
    wait_or_stop(duration<double>(warmup), interrupted);
    if (interrupted) return stopped_before_fault();
    if (auto code = check_pair("after the warmup, before any fault: ")) {
        client.stop();
        return *code;
    }

    // 3. The fault.
    Report rep;
    rep.kind = *kind;
    rep.connections = connections;
    // Whom to watch: the backup when it may promote, the primary when it should live on.
    const bool watch_backup = *kind != Kind::kill_backup, watch_primary = !primary_fails(*kind);
    Monitor monitor(primary_socket, backup_socket, watch_primary, watch_backup);
    Clock::time_point t_fault = Clock::now();
    Result<void> injected;
    switch (*kind) {
    case Kind::kill_primary:
    case Kind::hang_primary:
    case Kind::kill_backup: {
        int sig = *kind == Kind::hang_primary ? SIGSTOP : SIGKILL;
        rep.fault = fmt::format("{} to the {} (pid {})", sig == SIGSTOP ? "SIGSTOP" : "SIGKILL",
                                signals_primary ? "primary" : "backup", target_pid);
        t_fault = Clock::now();
        if (::kill(target_pid, sig) != 0) injected = sys_error("signalling pid " + std::to_string(target_pid), errno);
        break;
    }
    case Kind::partition:
        rep.fault = "--partition-command";
        t_fault = Clock::now();
        injected = run_shell(partition_cmd, std::chrono::seconds(60));
        break;
    case Kind::corrupt_link: {
        rep.fault = "one bit of the checkpoint stream flipped by the primary";
        auto flipped = corrupt_link(primary_socket);
        if (flipped) t_fault = wall.steady(*flipped);
        else injected = std::move(flipped.error());
        break;
    }
    }
    monitor.start();
    rep.fault_unix_s = wall.at(t_fault);
    if (!injected) {
        monitor.stop();
        client.stop();
        std::fprintf(stderr, "understudy drill: the fault was not injected: %s\n", injected.error().describe().c_str());
        return kExitUnreachable;
    }
    say(rep.fault + " at " + iso_utc(rep.fault_unix_s));

    // 4. The pair's reaction, then --after seconds of service.
    const auto limit = t_fault + std::chrono::duration_cast<Clock::duration>(duration<double>(wait_limit));
    std::optional<Clock::time_point> reacted; // the survivor took over (or knew it was alone)
    while (Clock::now() < limit && !interrupted) {
        Observed o = monitor.observed();
        if (primary_fails(*kind)) reacted = o.backup_active;
        else if (*kind == Kind::kill_backup || *kind == Kind::corrupt_link) reacted = o.primary_unprotected;
        else reacted = o.backup_active ? o.backup_active : o.primary_unprotected;
        if (reacted) break;
        wait_or_stop(kPollEvery, interrupted);
    }
    std::optional<Clock::time_point> served;
    if (reacted) {
        say("the pair reacted; waiting for the service to answer again");
        while (Clock::now() < limit && !interrupted && !(served = client.reply_after(std::max(*reacted, t_fault))))
            wait_or_stop(milliseconds(10), interrupted);
    }
    if (served) {
        say(fmt::format("served again {:.1f} ms after the fault; writing {:g} s more", duration<double, std::milli>(*served - t_fault).count(), after));
        wait_or_stop(duration<double>(after), interrupted);
    }
    // For a partition, a promotion can follow the primary's loss of its backup: give the
    // backup its failure timeout before judging who serves.
    if (*kind == Kind::partition) wait_or_stop(milliseconds(500), interrupted);
    client.stop();
    monitor.stop();
    Observed seen = monitor.observed();

    // Detection and promotion.
    auto since_fault = [&](std::optional<Clock::time_point> t) -> std::optional<double> {
        if (!t) return std::nullopt;
        return duration<double, std::milli>(*t - t_fault).count();
    };
    const auto& lf = seen.backup_last ? seen.backup_last->last_failover : std::nullopt;
    const bool promoted = seen.backup_last && seen.backup_last->promoted;
    if (promoted && lf && lf->detected_unix_s >= rep.fault_unix_s - 1.0) {
        rep.detection_ms = (lf->detected_unix_s - rep.fault_unix_s) * 1e3;
        if (lf->running_unix_s) rep.promotion_ms = (*lf->running_unix_s - lf->detected_unix_s) * 1e3;
        rep.detection_source = "fault -> the backup's session ended, status.last_failover";
    } else if (promoted) {
        rep.detection_ms = since_fault(seen.backup_promoting);
        if (seen.backup_promoting && seen.backup_active)
            rep.promotion_ms = duration<double, std::milli>(*seen.backup_active - *seen.backup_promoting).count();
        rep.detection_source = "fault -> the backup's state promoting, status polled every 5 ms";
    } else if (*kind == Kind::kill_backup || seen.primary_unprotected) {
        rep.detection_ms = since_fault(seen.primary_unprotected);
        rep.detection_source = "fault -> the primary's state unprotected, status polled every 5 ms";
    } else if (seen.backup_waiting) {
        rep.detection_ms = since_fault(seen.backup_waiting);
        rep.detection_source = "fault -> the backup's session ended, status polled every 5 ms";
    }

    // Survivor: who runs the VM for clients now.
    const bool backup_serves = promoted && seen.backup_last->active_primary;
    const bool primary_serves = !primary_fails(*kind) && seen.primary_last && seen.primary_last->active_primary;
    if (backup_serves) {
        rep.survivor = "backup";
        rep.survivor_socket = backup_socket;
        rep.survivor_state = state_text(*seen.backup_last);
    } else if (primary_serves) {
        rep.survivor = "primary";
        rep.survivor_socket = primary_socket;
        rep.survivor_state = state_text(*seen.primary_last);
    } else {
        rep.survivor = "none";
    }
    if (backup_serves && primary_serves)
        rep.notes.push_back("both instances run the VM (split brain without an arbiter); clients reach the one the network "
                            "last learned (the promoted backup announces itself)");

    // 5. Read back every acknowledged key.
    auto replies = client.replies();
    for (size_t i = 1; i < replies.size(); ++i) {
        double gap = duration<double, std::milli>(replies[i] - replies[i - 1]).count();
        if (!rep.outage_ms || gap > *rep.outage_ms) rep.outage_ms = gap;
    }
    auto acked = client.acknowledged();
    rep.acknowledged = acked.size();
    say(fmt::format("reading {} acknowledged keys back", acked.size()));
    Readback rb = read_back(*service, acked, Clock::now() + std::chrono::seconds(interrupted ? 5 : 30));
    rep.readback_error = rb.error;
    rep.missing = rb.missing;
    rep.wrong = rb.wrong;
    rep.lost = rb.error ? rep.acknowledged : rb.missing + rb.wrong; // nothing verified: every write counts as lost
    rep.lost_examples = rb.examples;
    for (const auto& s : client.stats()) {
        rep.reconnects += s.reconnects;
        rep.broken += s.broken;
        rep.in_doubt += s.in_doubt;
        if (s.broken > 0 || s.reconnects > 0) rep.connections_survived = false;
    }

    // After the drill: a stopped primary must not be left to resume; a cut is healed.
    if (*kind == Kind::hang_primary) {
        if (::kill(target_pid, SIGKILL) == 0)
            rep.notes.push_back(fmt::format("the stopped primary (pid {}) was killed: resumed, it would run a second copy "
                                            "of the VM", target_pid));
        else
            rep.notes.push_back(fmt::format("could not kill the stopped primary (pid {}): {}; kill it by hand", target_pid,
                                            std::strerror(errno)));
    }
    if (*kind == Kind::partition && !heal_cmd.empty()) {
        if (auto h = run_shell(heal_cmd, std::chrono::seconds(60)); !h)
            rep.notes.push_back("the heal command failed: " + h.error().describe());
        else
            rep.notes.push_back("the cut was healed (--heal-command) after the read-back");
    }

    // The verdict.
    if (interrupted) rep.reasons.push_back("interrupted (SIGINT or SIGTERM) before the drill finished");
    else if (!reacted) rep.reasons.push_back(fmt::format("the pair did not react within {:g} s", wait_limit));
    else if (!served) rep.reasons.push_back(fmt::format("the service did not answer again within {:g} s of the fault", wait_limit));
    if (rb.error) rep.reasons.push_back("the read-back failed: " + *rb.error);
    else if (rep.lost) rep.reasons.push_back(fmt::format("{} acknowledged writes lost (e.g. {})", rep.lost, rb.examples.front()));
    if (rep.survivor == "none") rep.reasons.push_back("nobody serves");
    if (primary_fails(*kind) && rep.survivor != "backup") rep.reasons.push_back("the backup did not take over");
    if ((*kind == Kind::kill_backup || *kind == Kind::corrupt_link) && rep.survivor != "primary")
        rep.reasons.push_back("the primary does not serve on");
    if (*kind == Kind::corrupt_link && promoted) rep.reasons.push_back("the backup promoted after a corrupt stream");
    if (primary_fails(*kind) && !rep.connections_survived)
        rep.reasons.push_back(fmt::format("client connections did not survive ({} broken, {} reconnects)", rep.broken, rep.reconnects));
    if (rep.acknowledged == 0) rep.reasons.push_back("no write was acknowledged");
    rep.pass = rep.reasons.empty();

    std::fputs(json ? (report_json(rep) + "\n").c_str() : report_text(rep).c_str(), stdout);
    std::fflush(stdout);
    return rep.pass ? kExitPass : kExitFailed;
}

} // namespace understudy::cli
