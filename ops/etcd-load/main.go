// etcd-load: a closed-loop load client for etcd built on etcd's own Go client (clientv3), so
// ops/load-test can measure etcd the way etcd's users reach it, beside flotilla-bench's driver.
// Built by ops/load-test from Debian's packaged sources (golang-go, golang-etcd-server-dev) in
// GOPATH mode; no network needed.
//
// Usage: etcd-load -endpoints A,B,C -op put|get -clients 64 -records 100000 -value-size 100
//
//	-duration 15s -warmup 3s [-watch-pids P,Q,R] [-json FILE -workload NAME]
//
// Prints one line: op, clients, ops/s, p50/p99 in ms, errors, and the CPU per operation of
// this client and of each process in -watch-pids (the servers), over the measured window.
// With -json, writes the same figures for flotilla-bench compare --go-client.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
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

// cpuSeconds is utime + stime of a process from /proc/<pid>/stat ("self" for this one), in
// seconds; ok is false when it cannot be read. The command name (field 2) may hold spaces,
// so fields are counted from the last ')'.
func cpuSeconds(pid string) (float64, bool) {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, false
	}
	line := string(data)
	close := strings.LastIndexByte(line, ')')
	if close < 0 {
		return 0, false
	}
	fields := strings.Fields(line[close+1:])
	if len(fields) < 13 {
		return 0, false
	}
	user, err1 := strconv.ParseUint(fields[11], 10, 64)
	system, err2 := strconv.ParseUint(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return float64(user+system) / 100, true // USER_HZ is 100 on Linux
}

func processName(pid string) string {
	data, err := os.ReadFile("/proc/" + pid + "/comm")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}

type processCPU struct {
	PID                      int     `json:"pid"`
	Name                     string  `json:"name"`
	MicrosecondsPerOperation float64 `json:"microsecondsPerOperation"`
}

type result struct {
	Tool                           string       `json:"tool"`
	Workload                       string       `json:"workload"`
	Op                             string       `json:"op"`
	Clients                        int          `json:"clients"`
	MeasuredSeconds                float64      `json:"measuredSeconds"`
	ThroughputOpsPerSecond         float64      `json:"throughputOpsPerSecond"`
	P50Microseconds                float64      `json:"p50Microseconds"`
	P99Microseconds                float64      `json:"p99Microseconds"`
	Errors                         int64        `json:"errors"`
	ClientMicrosecondsPerOperation float64      `json:"clientMicrosecondsPerOperation"`
	Processes                      []processCPU `json:"processes"`
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
	watchPIDs := flag.String("watch-pids", "", "comma-separated server process ids whose CPU per operation is reported")
	jsonPath := flag.String("json", "", "also write the figures to this JSON file")
	workload := flag.String("workload", "", "the flotilla-bench workload these figures stand beside (recorded in -json)")
	flag.Parse()
	var pids []string
	if *watchPIDs != "" {
		pids = strings.Split(*watchPIDs, ",")
		if len(pids) > 64 {
			fmt.Fprintln(os.Stderr, "etcd-load: -watch-pids names more than 64 processes")
			os.Exit(2)
		}
		for _, pid := range pids {
			if n, err := strconv.Atoi(pid); err != nil || n <= 0 {
				fmt.Fprintf(os.Stderr, "etcd-load: -watch-pids: '%s' is not a positive process id\n", pid)
				os.Exit(2)
			}
		}
	}
	sample := func() map[string]float64 {
		cpu := map[string]float64{}
		for _, pid := range append([]string{"self"}, pids...) {
			if seconds, ok := cpuSeconds(pid); ok {
				cpu[pid] = seconds
			}
		}
		return cpu
	}
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
	cpuBefore := sample()
	measuring.Store(true)
	begin := time.Now()
	time.Sleep(*duration)
	measuring.Store(false)
	measured := time.Since(begin)
	stopping.Store(true)
	wg.Wait()
	cpuAfter := sample()
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
	operations := float64(len(all)) + float64(errors.Load())
	perOperation := func(pid string) (float64, bool) {
		before, ok1 := cpuBefore[pid]
		after, ok2 := cpuAfter[pid]
		if !ok1 || !ok2 || operations == 0 {
			return 0, false
		}
		return (after - before) * 1e6 / operations, true
	}
	out := result{Tool: "etcd-load", Workload: *workload, Op: *op, Clients: *clients, MeasuredSeconds: measured.Seconds(),
		ThroughputOpsPerSecond: float64(len(all)) / measured.Seconds(), P50Microseconds: percentile(0.5) * 1000,
		P99Microseconds: percentile(0.99) * 1000, Errors: errors.Load(), Processes: []processCPU{}}
	out.ClientMicrosecondsPerOperation, _ = perOperation("self")
	cpu := fmt.Sprintf("client %.0f µs", out.ClientMicrosecondsPerOperation)
	if len(pids) > 0 {
		total := 0.0
		var each []string
		for _, pid := range pids {
			if micros, ok := perOperation(pid); ok {
				n, _ := strconv.Atoi(pid)
				name := processName(pid)
				out.Processes = append(out.Processes, processCPU{PID: n, Name: name, MicrosecondsPerOperation: micros})
				total += micros
				each = append(each, fmt.Sprintf("%s %.0f", name, micros))
			}
		}
		cpu += fmt.Sprintf(", servers %.0f µs (%s)", total, strings.Join(each, ", "))
	}
	fmt.Printf("etcd-load %s: %d clients, %.0f ops/s, p50 %.2f ms, p99 %.2f ms, errors %d; CPU per operation: %s\n",
		*op, *clients, out.ThroughputOpsPerSecond, percentile(0.5), percentile(0.99), errors.Load(), cpu)
	if *jsonPath != "" {
		data, _ := json.MarshalIndent(out, "", "  ")
		if err := os.WriteFile(*jsonPath, append(data, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "etcd-load: cannot write", *jsonPath, ":", err)
			os.Exit(1)
		}
	}
}
