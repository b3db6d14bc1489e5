// k8s-api-standin: a Kubernetes API server stand-in for imdstrace's
// --pods k8s-api tests (see k8s_api_standin.hpp for what it serves).
//
//   k8s-api-standin --pods FILE --listen 127.0.0.1:6443 [--token T]
//                   [--mode ok|unauthorized|forbidden|hang] [--node NAME] [--ready-file F]
//                   [--events-mode ok|forbidden] [--events-log FILE]
//
// Plain HTTP: point the client at http://ADDR:PORT (kubeconfig server, or
// KUBERNETES_SERVICE_HOST=http://ADDR:PORT with IMDSTRACE_SA_DIR).  The ready
// file gets "ADDR:PORT" once listening (useful with port 0).  SIGTERM/SIGINT stop it.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "k8s_api_standin.hpp"

namespace {

k8s_standin::Server* g_server = nullptr;

void usage(const char* why) {
    std::cerr << "k8s-api-standin: " << why << "\n"
              << "usage: k8s-api-standin --pods FILE --listen ADDR:PORT [--token T] "
                 "[--mode ok|unauthorized|forbidden|hang] [--node NAME] [--ready-file F] "
                 "[--events-mode ok|forbidden] [--events-log FILE]\n";
    std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
    k8s_standin::Options o;
    o.listen.clear();
    std::string ready;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage((a + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--pods") o.pods_file = val();
        else if (a == "--listen") o.listen = val();
        else if (a == "--token") o.token = val();
        else if (a == "--mode") o.mode = val();
        else if (a == "--node") o.node = val();
        else if (a == "--ready-file") ready = val();
        else if (a == "--events-mode") o.events_mode = val();
        else if (a == "--events-log") o.events_log = val();
        else if (a == "-h" || a == "--help") usage("help");
        else usage(("unknown argument " + a).c_str());
    }
    if (o.pods_file.empty()) usage("--pods FILE is required");
    if (o.listen.empty()) usage("--listen ADDR:PORT is required");
    if (o.mode != "ok" && o.mode != "unauthorized" && o.mode != "forbidden" && o.mode != "hang")
        usage("--mode must be ok, unauthorized, forbidden or hang");
    if (o.events_mode != "ok" && o.events_mode != "forbidden") usage("--events-mode must be ok or forbidden");
    try {
        k8s_standin::Server server(o);
        g_server = &server;
        struct sigaction sa {};
        sa.sa_handler = [](int) {
            // Only async-signal-safe work: the wake pipe.
            if (g_server) g_server->request_stop();
        };
        sigaction(SIGTERM, &sa, nullptr);
        sigaction(SIGINT, &sa, nullptr);
        std::signal(SIGPIPE, SIG_IGN);
        std::cerr << "k8s-api-standin: listening on " << server.address() << " (mode " << o.mode << ")\n";
        if (!ready.empty()) {
            std::ofstream(ready + ".tmp") << server.address() << "\n";
            std::rename((ready + ".tmp").c_str(), ready.c_str());
        }
        server.run();
        server.stop();
        g_server = nullptr;
    } catch (const std::exception& e) {
        std::cerr << "k8s-api-standin: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
