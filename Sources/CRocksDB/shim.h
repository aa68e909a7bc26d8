#ifndef FLOTILLA_CROCKSDB_SHIM_H
#define FLOTILLA_CROCKSDB_SHIM_H
#include <rocksdb/c.h>
#endif
