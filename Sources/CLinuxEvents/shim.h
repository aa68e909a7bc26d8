#ifndef FLOTILLA_CLINUXEVENTS_SHIM_H
#define FLOTILLA_CLINUXEVENTS_SHIM_H
// epoll and eventfd, which Swift's Glibc module does not export: the store thread's Raft
// sockets (FlotillaServer/RaftSocketTransport.swift).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
