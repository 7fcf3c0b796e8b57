// Command loadgen is conch's own small load generator for etcd-compatible
// servers. It is built against etcd 3.4's clientv3 (Debian's
// golang-etcd-server-dev, GOPATH mode; see ../build.sh) and drives any server
// that speaks the etcd v3 gRPC API, so the same binary measures both etcd and
// conch.
//
// Every run is bounded twice: by -total operations and by -duration. It
// prints exactly one JSON line on stdout:
//
//	{"op":"put","ops":20000,"errors":0,"elapsed_s":1.9,"qps":10500,
//	 "p50_ms":4.1,"p90_ms":6.0,"p99_ms":9.8,"max_ms":22.1,...}
//
// Flags mirror etcd's own benchmark tool where they overlap: -clients is the
// number of concurrent goroutines issuing requests, -conns the number of gRPC
// connections they share (round robin). -conns 0 (default) means one
// connection per client.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
)

type result struct {
	Op         string   `json:"op"`
	Endpoints  []string `json:"endpoints"`
	Clients    int      `json:"clients"`
	Conns      int      `json:"conns"`
	KeySize    int      `json:"key_size"`
	ValSize    int      `json:"val_size"`
	SeqKeys    bool     `json:"seq_keys"`
	KeySpace   int64    `json:"key_space"`
	Total      int64    `json:"total"`
	DurationS  float64  `json:"duration_cap_s"`
	Ops        int64    `json:"ops"`    // successful operations
	Errors     int64    `json:"errors"` // failed operations
	ElapsedS   float64  `json:"elapsed_s"`
	QPS        float64  `json:"qps"` // successful ops / elapsed
	MeanMS     float64  `json:"mean_ms"`
	P50MS      float64  `json:"p50_ms"`
	P90MS      float64  `json:"p90_ms"`
	P99MS      float64  `json:"p99_ms"`
	MaxMS      float64  `json:"max_ms"`
	CappedBy   string   `json:"capped_by"` // "total" or "duration"
	FirstError string   `json:"first_error,omitempty"`
	// CPU used by this process during the measured phase (user+sys seconds)
	// and as percent of one core; lets callers check that the generator is
	// not the bottleneck.
	CPUUserS float64 `json:"loadgen_cpu_user_s"`
	CPUSysS  float64 `json:"loadgen_cpu_sys_s"`
	CPUPct   float64 `json:"loadgen_cpu_pct"`
}

func rusage() (user, sys float64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime), tv(ru.Stime)
}

// makeKey renders n as a zero-padded decimal of exactly size bytes (the
// number wraps modulo 10^size for small sizes), so keys are printable and
// sort in numeric order.
func makeKey(prefix string, n int64, size int) string {
	width := size - len(prefix)
	if width < 1 {
		width = 1
	}
	if width < 18 {
		n %= int64(math.Pow10(width))
	}
	return fmt.Sprintf("%s%0*d", prefix, width, n)
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	// nearest-rank
	idx := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if idx < 0 {
		idx = 0
	}
	if idx >= len(sorted) {
		idx = len(sorted) - 1
	}
	return sorted[idx]
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated gRPC endpoints (host:port or http://host:port)")
	clients := flag.Int("clients", 1, "number of concurrent client goroutines")
	conns := flag.Int("conns", 0, "number of gRPC connections shared by the clients (0 = one per client)")
	total := flag.Int64("total", 1000, "total operations to issue (upper bound)")
	duration := flag.Duration("duration", 30*time.Second, "wall-clock cap on the measured phase")
	keySize := flag.Int("key-size", 8, "key size in bytes")
	valSize := flag.Int("val-size", 256, "value size in bytes")
	op := flag.String("op", "put", "operation: put | range | range-serializable | txn-put")
	seqKeys := flag.Bool("seq-keys", false, "use sequential keys (default: uniformly random keys in [0, key-space))")
	keySpace := flag.Int64("key-space", 100000, "number of distinct keys for random keys (and modulus for -seq-keys)")
	keyPrefix := flag.String("key-prefix", "", "prefix prepended to every key (counts toward -key-size)")
	reqTimeout := flag.Duration("request-timeout", 10*time.Second, "per-request timeout")
	dialTimeout := flag.Duration("dial-timeout", 5*time.Second, "timeout for the initial connection check")
	seed := flag.Int64("seed", 1, "random seed for keys and value bytes")
	flag.Parse()

	if *clients < 1 || *total < 1 || *keySpace < 1 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -clients, -total, -key-space must be >= 1 and -duration > 0")
		os.Exit(2)
	}
	switch *op {
	case "put", "range", "range-serializable", "txn-put":
	default:
		fmt.Fprintf(os.Stderr, "loadgen: unknown -op %q\n", *op)
		os.Exit(2)
	}
	nconns := *conns
	if nconns <= 0 || nconns > *clients {
		nconns = *clients
	}
	eps := strings.Split(*endpoints, ",")

	// Quiet client logging: only errors, to stderr.
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	logCfg.OutputPaths = []string{"stderr"}
	logCfg.ErrorOutputPaths = []string{"stderr"}

	cls := make([]*clientv3.Client, nconns)
	for i := range cls {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   eps,
			DialTimeout: *dialTimeout,
			LogConfig:   &logCfg,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: connect %v: %v\n", eps, err)
			os.Exit(1)
		}
		defer c.Close()
		cls[i] = c
	}
	// Make sure every connection is actually up before the clock starts.
	for i, c := range cls {
		ctx, cancel := context.WithTimeout(context.Background(), *dialTimeout)
		_, err := c.Get(ctx, "\x00loadgen-warmup", clientv3.WithSerializable())
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: warm-up on connection %d failed: %v\n", i, err)
			os.Exit(1)
		}
	}

	vrand := rand.New(rand.NewSource(*seed))
	valBytes := make([]byte, *valSize)
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	for i := range valBytes {
		valBytes[i] = alphabet[vrand.Intn(len(alphabet))]
	}
	val := string(valBytes)

	var issued, okOps, errOps int64
	var firstErr atomic.Value
	lat := make([][]float64, *clients)

	u0, s0 := rusage()
	start := time.Now()
	deadline := start.Add(*duration)
	runCtx, runCancel := context.WithDeadline(context.Background(), deadline)
	defer runCancel()

	var wg sync.WaitGroup
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := cls[w%nconns]
			r := rand.New(rand.NewSource(*seed + int64(w)*7919 + 1))
			mine := make([]float64, 0, int(*total)/(*clients)+16)
			for {
				n := atomic.AddInt64(&issued, 1)
				if n > *total || time.Now().After(deadline) {
					break
				}
				var kn int64
				if *seqKeys {
					kn = (n - 1) % *keySpace
				} else {
					kn = r.Int63n(*keySpace)
				}
				key := makeKey(*keyPrefix, kn, *keySize)
				ctx, cancel := context.WithTimeout(runCtx, *reqTimeout)
				t0 := time.Now()
				var err error
				switch *op {
				case "put":
					_, err = c.Put(ctx, key, val)
				case "range":
					_, err = c.Get(ctx, key)
				case "range-serializable":
					_, err = c.Get(ctx, key, clientv3.WithSerializable())
				case "txn-put":
					_, err = c.Txn(ctx).
						If(clientv3.Compare(clientv3.Version(key), ">", -1)).
						Then(clientv3.OpPut(key, val)).
						Commit()
				}
				d := time.Since(t0)
				cancel()
				if err != nil {
					// A request cut off by the duration cap is not an error
					// of the server; don't count it at all.
					if runCtx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
						break
					}
					if atomic.AddInt64(&errOps, 1) == 1 {
						firstErr.Store(err.Error())
					}
					continue
				}
				atomic.AddInt64(&okOps, 1)
				mine = append(mine, float64(d.Nanoseconds())/1e6)
			}
			lat[w] = mine
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	u1, s1 := rusage()

	all := make([]float64, 0, okOps)
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Float64s(all)
	var sum float64
	for _, x := range all {
		sum += x
	}
	res := result{
		Op: *op, Endpoints: eps, Clients: *clients, Conns: nconns,
		KeySize: *keySize, ValSize: *valSize, SeqKeys: *seqKeys, KeySpace: *keySpace,
		Total: *total, DurationS: duration.Seconds(),
		Ops: okOps, Errors: errOps, ElapsedS: round3(elapsed),
		CappedBy: "total",
		CPUUserS: round3(u1 - u0), CPUSysS: round3(s1 - s0),
	}
	if okOps+errOps < *total {
		res.CappedBy = "duration"
	}
	if elapsed > 0 {
		res.QPS = math.Round(float64(okOps)/elapsed*10) / 10
		res.CPUPct = math.Round((u1-u0+s1-s0)/elapsed*1000) / 10
	}
	if len(all) > 0 {
		res.MeanMS = round3(sum / float64(len(all)))
		res.P50MS = round3(percentile(all, 50))
		res.P90MS = round3(percentile(all, 90))
		res.P99MS = round3(percentile(all, 99))
		res.MaxMS = round3(all[len(all)-1])
	}
	if v := firstErr.Load(); v != nil {
		res.FirstError = v.(string)
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if okOps == 0 {
		os.Exit(1)
	}
}
