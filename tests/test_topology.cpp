// The network test topology (scripts/topology.sh, tests/support/topology.hpp): hosts
// reach each other and nothing else, a client-side capture sees their traffic with
// timestamps, and nothing is left behind, also after a test was killed.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/catch_run.hpp"
#include "tests/support/topology.hpp"

using namespace understudy::test;
using namespace std::chrono_literals;

namespace {

// Distinct per process, so two runs of the suite (normal and sanitizer builds) can
// overlap; within a run the cases use it one after the other.
std::string topo_name() { return topology_name("tp"); }

std::string g_temp_dir; // made by main, removed after the run


std::string sh(const std::vector<std::string>& argv) {
    auto r = run_command(argv, 30s);
    REQUIRE(r);
    INFO(r->describe());
    REQUIRE(r->ok());
    return r->out;
}

// Namespaces and root-namespace links whose name starts with NAME-.
std::string leftovers(const std::string& name) {
    std::string found;
    for (const auto& listing : {sh({"ip", "netns", "list"}), sh({"ip", "-o", "link", "show"})}) {
        std::istringstream in(listing);
        for (std::string line; std::getline(in, line);)
            if (line.find(name + "-") != std::string::npos) found += line + "\n";
    }
    return found;
}

void require_ping(const Topology& t, Host from, const std::string& to) {
    auto r = t.run_in(from, {"ping", "-c", "1", "-W", "2", to}, 10s);
    REQUIRE(r);
    INFO("ping " << to << " from " << host_name(from) << ": " << r->describe() << r->out);
    REQUIRE(r->ok());
}

bool alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) return false;
    auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

} // namespace

TEST_CASE("hosts on the segment reach each other, and the root namespace reaches none of them") {
    auto t = Topology::create(topo_name());
    REQUIRE(t);
    CHECK(t->guest_ip() == "10.77.0.2");
    CHECK(t->tap() == topo_name() + "-tap");
    require_ping(*t, Host::client, t->ip(Host::primary));
    require_ping(*t, Host::client, t->ip(Host::backup));
    require_ping(*t, Host::primary, t->ip(Host::backup)); // the replication link
    require_ping(*t, Host::backup, t->ip(Host::client));

    // The guest's tap sits on the local bridge of the primary and of the backup.
    for (Host h : {Host::primary, Host::backup}) {
        auto link = t->run_in(h, {"ip", "-o", "link", "show", "dev", t->tap()});
        REQUIRE(link);
        INFO(link->describe());
        REQUIRE(link->ok());
        CHECK(link->out.find("master br0") != std::string::npos);
    }
    // No namespace has a route out.
    for (Host h : {Host::client, Host::primary, Host::backup, Host::sw}) {
        auto routes = t->run_in(h, {"ip", "route", "show", "default"});
        REQUIRE(routes);
        CHECK(routes->out.empty());
    }
    // The root namespace has none of the addresses and no route to them but its own
    // default; checked from the tables, since a probe would leave by that default.
    CHECK(sh({"ip", "-o", "addr", "show"}).find(" 10.77.0.") == std::string::npos);
    std::istringstream routes(sh({"ip", "route", "show", "match", t->ip(Host::primary)}));
    for (std::string line; std::getline(routes, line);) CHECK(line.rfind("default", 0) == 0);
}

TEST_CASE("a client's TCP connection reaches the primary host, and a client-side capture sees it timed") {
    auto t = Topology::create(topo_name());
    REQUIRE(t);
    auto cap = Capture::start(*t, Host::client, t->client_if(), g_temp_dir + "/client.pcap", "tcp port 7777");
    REQUIRE(cap);

    auto lfd = t->socket_in(Host::primary, AF_INET, SOCK_STREAM);
    REQUIRE(lfd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(7777);
    REQUIRE(::inet_pton(AF_INET, t->ip(Host::primary).c_str(), &addr.sin_addr) == 1);
    REQUIRE(::bind(*lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(*lfd, 4) == 0);

    double before = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::string log = g_temp_dir + "/client.log";
    auto client = t->spawn_in(Host::client, {"bash", "-c",
                                             "exec 3<>/dev/tcp/" + t->ip(Host::primary) +
                                                 "/7777 && echo hello >&3 && cat <&3"},
                              log);
    REQUIRE(client);
    pollfd pfd{*lfd, POLLIN, 0};
    REQUIRE(::poll(&pfd, 1, 10000) == 1);
    int conn = ::accept(*lfd, nullptr, nullptr);
    REQUIRE(conn >= 0);
    std::string got;
    char buf[64];
    while (got.find('\n') == std::string::npos) {
        ssize_t n = ::read(conn, buf, sizeof buf);
        REQUIRE(n > 0);
        got.append(buf, size_t(n));
    }
    CHECK(got == "hello\n");
    std::string reply = "pong:" + got;
    REQUIRE(::write(conn, reply.data(), reply.size()) == ssize_t(reply.size()));
    ::close(conn);
    ::close(*lfd);
    for (int i = 0; i < 500 && client->running(); ++i) std::this_thread::sleep_for(10ms);
    auto ended = client->stop();
    REQUIRE(ended);
    CHECK(ended->exit_status == 0);
    CHECK(read_file(log) == "pong:hello\n");
    double after = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

    auto rows = cap->read({"frame.time_epoch", "ip.src", "ip.dst", "tcp.payload"}, "tcp.len > 0");
    REQUIRE(rows);
    REQUIRE(rows->size() == 2);
    const auto& req = (*rows)[0];
    const auto& resp = (*rows)[1];
    CHECK(req[1] == t->ip(Host::client));
    CHECK(req[2] == t->ip(Host::primary));
    CHECK(req[3] == "68656c6c6f0a"); // "hello\n"
    CHECK(resp[1] == t->ip(Host::primary));
    CHECK(resp[3] == "706f6e673a68656c6c6f0a"); // "pong:hello\n"
    double t_req = std::stod(req[0]), t_resp = std::stod(resp[0]);
    CHECK(t_req >= before);
    CHECK(t_req <= t_resp);
    CHECK(t_resp <= after);
}

TEST_CASE("commands in a namespace are timed out, and their output is kept apart") {
    auto t = Topology::create(topo_name());
    REQUIRE(t);
    auto start = std::chrono::steady_clock::now();
    auto slow = t->run_in(Host::backup, {"sleep", "30"}, 300ms);
    REQUIRE(slow);
    CHECK(slow->timed_out);
    CHECK(slow->signal == SIGKILL);
    CHECK(std::chrono::steady_clock::now() - start < 5s);

    auto both = t->run_in(Host::client, {"bash", "-c", "echo out; echo err >&2; exit 3"});
    REQUIRE(both);
    CHECK(both->exit_status == 3);
    CHECK(both->out == "out\n");
    CHECK(both->err == "err\n");

    auto missing = run_command({"understudy-no-such-command"});
    CHECK(!missing);
}

TEST_CASE("a topology is gone once its object is, and up replaces a leftover of the same name") {
    const std::string name = topo_name();
    {
        auto t = Topology::create(name);
        REQUIRE(t);
        CHECK(sh({"ip", "netns", "list"}).find(name + "-primary") != std::string::npos);
        // A second up over a live topology rebuilds it in place.
        sh({"bash", US_TOPOLOGY_SCRIPT, "up", name});
        require_ping(*t, Host::client, t->ip(Host::backup));
    }
    CHECK(leftovers(name).empty());
    auto status = run_command({"bash", US_TOPOLOGY_SCRIPT, "status", name});
    REQUIRE(status);
    CHECK(status->exit_status == 1);
}

TEST_CASE("a killed test leaves nothing behind once down runs again") {
    const std::string name = topo_name();
    int report[2];
    REQUIRE(::pipe(report) == 0);
    // The child plays a test that dies without running any destructor, with a process
    // still running in the primary's namespace.
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::close(report[0]);
        auto t = Topology::create(name);
        if (!t) _exit(1);
        auto p = t->spawn_in(Host::primary, {"sleep", "600"});
        if (!p) _exit(1);
        pid_t pid = p->pid();
        if (::write(report[1], &pid, sizeof pid) != sizeof pid) _exit(1);
        ::pause();
        _exit(0);
    }
    ::close(report[1]);
    pid_t sleeper = -1;
    ssize_t n = ::read(report[0], &sleeper, sizeof sleeper);
    ::close(report[0]);
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    REQUIRE(n == ssize_t(sizeof sleeper));
    CHECK(!leftovers(name).empty());
    CHECK(alive(sleeper));

    auto down = Topology::remove(name);
    REQUIRE(down);
    CHECK(leftovers(name).empty());
    for (int i = 0; i < 200 && alive(sleeper); ++i) std::this_thread::sleep_for(10ms);
    CHECK(!alive(sleeper));
    auto again = Topology::remove(name); // down is safe twice
    INFO((again ? "" : again.error().describe()));
    CHECK(again);
}

TEST_CASE("a topology left by a process that is gone is removed when a name is next handed out") {
    pid_t gone = ::fork();
    REQUIRE(gone >= 0);
    if (gone == 0) _exit(0);
    REQUIRE(::waitpid(gone, nullptr, 0) == gone);
    const std::string stale = "tp" + std::to_string(gone);
    sh({"bash", US_TOPOLOGY_SCRIPT, "up", stale});
    REQUIRE(!leftovers(stale).empty());
    CHECK(topology_name("tp") == "tp" + std::to_string(::getpid()));
    CHECK(leftovers(stale).empty());
}

int main(int argc, char** argv) {
    std::string why = topology_skip_reason();
    if (!why.empty()) {
        std::printf("SKIPPED: %s\n", why.c_str());
        return 77;
    }
    return run_with_scratch_dir("understudy-topology", g_temp_dir, [&] { return understudy::test::run_catch(argc, argv); });
}
