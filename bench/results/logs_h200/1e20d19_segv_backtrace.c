#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void handler(int sig, siginfo_t* si, void* ctx) {
  void* frames[64];
  int n = backtrace(frames, 64);
  char buf[512];
  int len = snprintf(buf, sizeof buf, "SEGV at addr %p, %d frames\n", si->si_addr, n);
  write(2, buf, len);
  for (int i = 0; i < n; ++i) {
    Dl_info info;
    if (dladdr(frames[i], &info) && info.dli_fname) {
      len = snprintf(buf, sizeof buf, "#%d %p %s+0x%lx %s\n", i, frames[i], info.dli_fname,
                     (unsigned long)((char*)frames[i] - (char*)info.dli_fbase), info.dli_sname ? info.dli_sname : "?");
    } else {
      len = snprintf(buf, sizeof buf, "#%d %p ?\n", i, frames[i]);
    }
    write(2, buf, len);
  }
  _exit(139);
}
__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, 0);
}
