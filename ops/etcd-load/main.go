// etcd-load: a closed-loop load client for etcd built on etcd's own Go client (clientv3), so
// ops/load-test can measure etcd the way etcd's users reach it, beside flotilla-bench's driver.
// Built by ops/load-test from Debian's packaged sources (golang-go, golang-etcd-server-dev) in
// GOPATH mode; no network needed.
//
// Usage: etcd-load -endpoints A,B,C -op put|get -clients 64 -records 100000 -value-size 100
//
//	-duration 15s -warmup 3s
//
// Prints one line: op, clients, ops/s, p50/p99 in ms, errors.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// benchKey is flotilla-bench's key for a record (KeySpace.key): the prefix, then 16 hex
// digits of the FNV-1a hash of the record number's 8 little-endian bytes.
func benchKey(prefix string, record uint64) string {
	hash := uint64(0xcbf29ce484222325)
	for i := 0; i < 8; i++ {
		hash = (hash ^ (record >> (8 * i) & 0xff)) * 0x100000001b3
	}
	return fmt.Sprintf("%s%016x", prefix, hash)
}

func main() {
	endpoints := flag.String("endpoints", "", "comma-separated host:port list")
	op := flag.String("op", "put", "put or get (a linearizable Range)")
	clients := flag.Int("clients", 64, "concurrent closed-loop clients")
	records := flag.Int("records", 100000, "keys chosen from (uniformly)")
	valueSize := flag.Int("value-size", 100, "bytes per value")
	keyPrefix := flag.String("key-prefix", "user", "prefix of every key (flotilla-bench's default)")
	duration := flag.Duration("duration", 15*time.Second, "measured time")
	warmup := flag.Duration("warmup", 3*time.Second, "unmeasured time first")
	flag.Parse()
	if *endpoints == "" || (*op != "put" && *op != "get") || *clients < 1 || *clients > 10000 || *records < 1 || *valueSize < 0 || *valueSize > 1<<20 {
		fmt.Fprintln(os.Stderr, "etcd-load: need -endpoints, -op put|get, 1 ≤ -clients ≤ 10000, -records ≥ 1, 0 ≤ -value-size ≤ 1 MiB")
		os.Exit(2)
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd-load: cannot connect:", err)
		os.Exit(1)
	}
	defer client.Close()
	value := strings.Repeat("v", *valueSize)
	var measuring, stopping atomic.Bool
	var errors atomic.Int64
	latencies := make([][]time.Duration, *clients)
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			random := rand.New(rand.NewSource(int64(c) + 1))
			for !stopping.Load() {
				key := benchKey(*keyPrefix, uint64(random.Intn(*records)))
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				start := time.Now()
				var err error
				if *op == "put" {
					_, err = client.Put(ctx, key, value)
				} else {
					_, err = client.Get(ctx, key)
				}
				elapsed := time.Since(start)
				cancel()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errors.Add(1)
					continue
				}
				latencies[c] = append(latencies[c], elapsed)
			}
		}(c)
	}
	time.Sleep(*warmup)
	measuring.Store(true)
	begin := time.Now()
	time.Sleep(*duration)
	measuring.Store(false)
	measured := time.Since(begin)
	stopping.Store(true)
	wg.Wait()
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	percentile := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	fmt.Printf("etcd-load %s: %d clients, %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %d\n",
		*op, *clients, float64(len(all))/measured.Seconds(), percentile(0.5), percentile(0.99), errors.Load())
}
