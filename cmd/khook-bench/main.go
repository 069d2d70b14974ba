// Command khook-bench measures khook's stages against raw JetStream on the same machine in
// the same run, and writes the results as a table, bench/results.json, bench/results.md and
// bench/results.png. `make bench` runs it; docs/benchmarks.md explains each figure.
//
//	go run ./cmd/khook-bench                       # full run, about two minutes
//	go run ./cmd/khook-bench --events 300 --rates 200 --rate-duration 1s --out /tmp/smoke
//
// Every process under test (NATS, khook's stages, the raw baselines) is a separate process
// on 127.0.0.1, so CPU time and peak memory are the kernel's figures per process.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

type benchConfig struct {
	events       int
	storm        int
	rates        []int
	rateDuration time.Duration
	timeout      time.Duration
	out          string
	only         map[string]bool
	// relative is the fraction of relativeTo's capacity at which the relativeScenarios also
	// measure latency; relativeRate is that load, once relativeTo has run.
	relative     float64
	relativeRate int
	profiles     string // when set, a directory for each khook stage's CPU profile
	khookBin     string
	natsBin      string
	// fanInMiB is the fan-in scenario's backlog per edge.
	fanInMiB float64
	self     string
	workDir  string
}

// Latency is one fixed-load run: events offered at Rate per second; percentiles in ms from
// each event's scheduled send time to its arrival.
type Latency struct {
	Rate     int     `json:"rate"`
	Sent     int     `json:"sent"`
	Received int     `json:"received"`
	P50      float64 `json:"p50Ms"`
	P99      float64 `json:"p99Ms"`
	P999     float64 `json:"p999Ms"`
	Max      float64 `json:"maxMs"`
	// Relative marks the load that is a fraction of this machine's raw capacity.
	Relative bool `json:"relative,omitempty"`
}

// Result is one scenario.
type Result struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"` // raw or khook
	Description string `json:"description"`
	// Baseline names the raw result this one is compared to, and Ratio is events/s over the
	// baseline's events/s.
	Baseline string  `json:"baseline,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	// AltBaseline is a second comparison: for the end-to-end run, the raw pipeline that
	// also makes the agent call.
	AltBaseline   string             `json:"altBaseline,omitempty"`
	AltRatio      float64            `json:"altRatio,omitempty"`
	Events        int                `json:"events"`
	EventsPerSec  float64            `json:"eventsPerSec"`
	Latency       []Latency          `json:"latency"`
	CPUPer10k     float64            `json:"cpuSecondsPer10k"`     // the stage processes
	NATSCPUPer10k float64            `json:"natsCpuSecondsPer10k"` // the NATS server
	PeakRSSMiB    map[string]float64 `json:"peakRssMiB"`
	IdleRSSMiB    float64            `json:"idleRssMiB"`  // the largest stage's RSS once the load has passed
	IdleAnonMiB   float64            `json:"idleAnonMiB"` // its anonymous part (heap, stacks), without the binary's mapped pages
	// LoadAnonMiB is the largest anonymous RSS any stage reached during the saturation run
	// (up to 20,000 events in flight), LowAnonMiB during the first fixed load.
	LoadAnonMiB float64 `json:"loadAnonMiB,omitempty"`
	LowAnonMiB  float64 `json:"lowAnonMiB,omitempty"`
	AgentCalls  int     `json:"agentCalls,omitempty"`
	// TaskSeconds is, for the storms, the time from the first event to the last agent task.
	TaskSeconds float64 `json:"taskSeconds,omitempty"`
	// Scale is the scale scenario's runs, one per stage and replica count.
	Scale []ScalePoint `json:"scale,omitempty"`
	// FanIn is the fan-in scenario's catch-up and live figures.
	FanIn *FanIn `json:"fanIn,omitempty"`
	Error string `json:"error,omitempty"`
}

// Report is one run of the suite.
type Report struct {
	Date      time.Time `json:"date"`
	GoVersion string    `json:"goVersion"`
	CPUs      int       `json:"cpus"`
	Events    int       `json:"events"`
	Rates     []int     `json:"rates"`
	RateSecs  float64   `json:"rateSeconds"`
	// RelativeRate is the load at Relative × raw-two-stage-call's capacity in this run.
	Relative     float64   `json:"relative"`
	RelativeRate int       `json:"relativeRate"`
	Results      []*Result `json:"results"`
}

type scenario struct {
	name, kind, baseline, description string
	run                               func(*env, *Result) error
	altBaseline                       string
}

var scenarios = []scenario{
	{"raw-publish", "raw", "", "JetStream file-storage publish, acknowledged, pipelined (the physical ingest limit)", rawPublish, ""},
	{"raw-ingress", "raw", "", "a net/http handler that publishes each POST and answers 202 once stored (the webhook's ceiling)", rawIngress, ""},
	{"raw-relay", "raw", "", "one stage: pull, republish, ack (the mapper's ceiling)", rawRelay, ""},
	{"raw-call", "raw", "", "pull, the same A2A call to the same agent, ack, one call at a time", rawCall, ""},
	{"raw-call-16", "raw", "", "pull, the same A2A call, ack, with 16 calls in flight as the dispatcher's workers (the dispatcher's ceiling)", rawCallConcurrent, ""},
	{"raw-two-stage", "raw", "", "pull, republish, ack; pull, ack (the end-to-end ceiling)", rawTwoStage, ""},
	{"raw-two-stage-call", "raw", "", "pull, republish, ack; pull, the A2A call, ack (the end-to-end ceiling with the agent call)", rawTwoStageCall, ""},
	{"webhook", "khook", "raw-ingress", "POST to the webhook producer until its 202 (stored in KHOOK_RAW)", khookWebhook, "raw-publish"},
	{"webhook-batch", "khook", "raw-publish", "POST of JSON arrays of 100 events to the webhook until its 202", khookWebhookBatch, ""},
	{"mapper", "khook", "raw-relay", "raw event stored to normalized event stored", khookMapper, ""},
	{"dispatcher", "khook", "raw-call-16", "normalized event stored to agent receipt (match, suppress, record, call)", khookDispatcher, "raw-call"},
	{"storm", "khook", "raw-two-stage", "raw events (--storm, 20,000), 99% repeats of one resource in its suppression window, through mapper and dispatcher", khookStorm, ""},
	{"storm-grouped", "khook", "raw-two-stage", "the storm with the hook grouping by namespace (groupWait 5s + 1s per 1,000 events): one task for the whole incident", khookStormGrouped, ""},
	{"end-to-end", "khook", "raw-two-stage", "POST to agent receipt through producer, mapper and dispatcher processes", khookEndToEnd, "raw-two-stage-call"},
	{"scale", "khook", "", "1, 2 and 4 dispatcher replicas against a 50 ms agent; 1, 2 and 4 mapper replicas at a fixed offered load", khookScale, ""},
	{"fan-in", "khook", "raw-publish", "a hub's raw stream sourcing 3 edges over leaf nodes: the catch-up of a backlog per edge (--fanin-mib), then every edge publishing at once", fanIn, ""},
}

// relativeTo is the scenario whose capacity sets the relative load, and relativeScenarios
// those that measure latency at it.
const relativeTo = "raw-two-stage-call"

var relativeScenarios = map[string]bool{relativeTo: true, "end-to-end": true}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "relay" {
		if err := runRelay(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "khook-bench:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("khook-bench", flag.ContinueOnError)
	events := fs.Int("events", 20000, "events per saturation run")
	storm := fs.Int("storm", 20000, "events of the storm scenario (a multiple of 100)")
	rates := fs.String("rates", "1000,5000", "offered loads, events per second")
	rateDuration := fs.Duration("rate-duration", 5*time.Second, "how long each offered load lasts")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for a run's events to arrive")
	out := fs.String("out", "bench", "directory for results.json, results.md and results.png")
	only := fs.String("only", "", "comma-separated scenarios to run (default: all)")
	profiles := fs.String("profile", "", "write a CPU profile of every khook stage to this directory (SCENARIO-STAGE.pprof)")
	relative := fs.Float64("relative", 0.5, "also measure end-to-end latency at this fraction of raw-two-stage-call's capacity")
	khookBin := fs.String("khook", "", "khook binary (default: built from ./cmd/khook)")
	natsBin := fs.String("nats-server", "", "nats-server binary (default: built from the module khook uses)")
	fanInMiB := fs.Float64("fanin-mib", 100, "the fan-in scenario's backlog per edge, in MiB")
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout) // --help is not an error: usage on stdout, exit 0
			fs.Usage()
			return nil
		}
		fs.SetOutput(os.Stderr)
		fs.Usage()
		return err
	}
	cfg := &benchConfig{events: *events, rateDuration: *rateDuration, timeout: *timeout, out: *out, only: map[string]bool{}, relative: *relative, storm: *storm, profiles: *profiles, fanInMiB: *fanInMiB}
	for _, r := range strings.Split(*rates, ",") {
		if r = strings.TrimSpace(r); r != "" {
			n, err := strconv.Atoi(r)
			if err != nil || n <= 0 {
				return fmt.Errorf("--rates: %q is not a positive number", r)
			}
			cfg.rates = append(cfg.rates, n)
		}
	}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.only[s] = true
		}
	}
	var err error
	if cfg.workDir, err = os.MkdirTemp("", "khook-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(cfg.workDir)
	if cfg.self, err = os.Executable(); err != nil {
		return err
	}
	if cfg.khookBin, cfg.natsBin = *khookBin, *natsBin; cfg.khookBin == "" || cfg.natsBin == "" {
		if err := buildBinaries(cfg); err != nil {
			return err
		}
	}

	rep := &Report{Date: time.Now().UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Events: cfg.events,
		Rates: cfg.rates, RateSecs: cfg.rateDuration.Seconds()}
	byName := map[string]*Result{}
	for _, sc := range scenarios {
		if len(cfg.only) > 0 && !cfg.only[sc.name] {
			continue
		}
		fmt.Fprintf(os.Stderr, "running %s: %s\n", sc.name, sc.description)
		r := &Result{Name: sc.name, Kind: sc.kind, Baseline: sc.baseline, AltBaseline: sc.altBaseline, Description: sc.description}
		e, err := newEnv(cfg, sc.name)
		if err == nil {
			err = sc.run(e, r)
		}
		if err != nil {
			r.Error = err.Error()
			fmt.Fprintf(os.Stderr, "  %s failed: %v\n", sc.name, err)
			if e != nil {
				for _, p := range e.stages {
					fmt.Fprintf(os.Stderr, "  ---- %s output ----\n%s\n", p.name, tail(p.out.String(), 2000))
				}
			}
		}
		if e != nil {
			e.close()
		}
		if b := byName[sc.baseline]; b != nil && b.EventsPerSec > 0 {
			r.Ratio = r.EventsPerSec / b.EventsPerSec
		}
		if b := byName[sc.altBaseline]; b != nil && b.EventsPerSec > 0 {
			r.AltRatio = r.EventsPerSec / b.EventsPerSec
		}
		byName[sc.name] = r
		rep.Results = append(rep.Results, r)
	}
	rep.Relative, rep.RelativeRate = cfg.relative, cfg.relativeRate
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.md"), []byte(markdown(rep)), 0o644); err != nil {
		return err
	}
	if err := plotReport(rep, filepath.Join(cfg.out, "results.png")); err != nil {
		return err
	}
	for _, r := range rep.Results {
		if len(r.Scale) > 0 {
			if err := plotScale(r, filepath.Join(cfg.out, "results-scale.png")); err != nil {
				return err
			}
		}
	}
	table(stdout, rep)
	// The last line names every scenario that failed and why (the first line of its cause;
	// the whole of it, with its stages' output, was printed when it failed).
	var failed []string
	for _, r := range rep.Results {
		if r.Error != "" {
			cause, _, _ := strings.Cut(r.Error, "\n")
			failed = append(failed, r.Name+": "+cause)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d scenario(s) failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

// buildBinaries builds khook from this module and nats-server from the module khook
// embeds, so the benchmark needs nothing beyond the Go module proxy.
func buildBinaries(cfg *benchConfig) error {
	for _, b := range []struct {
		dst *string
		out string
		pkg string
	}{
		{&cfg.khookBin, "khook", "./cmd/khook"},
		{&cfg.natsBin, "nats-server", "github.com/nats-io/nats-server/v2"},
	} {
		if *b.dst != "" {
			continue
		}
		*b.dst = filepath.Join(cfg.workDir, b.out)
		cmd := exec.Command("go", "build", "-o", *b.dst, b.pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s: %w", b.pkg, err)
		}
	}
	return nil
}

func fmtRatio(r *Result) string {
	if r.Baseline == "" || r.Ratio == 0 {
		return "-" // no baseline, or it was not run (--only) or failed
	}
	s := fmt.Sprintf("%.2f× %s", r.Ratio, r.Baseline)
	if r.AltBaseline != "" && r.AltRatio > 0 {
		s += fmt.Sprintf(", %.2f× %s", r.AltRatio, r.AltBaseline)
	}
	return s
}

func latencyCell(l Latency) string {
	if l.Received == 0 {
		return "none arrived"
	}
	s := fmt.Sprintf("%.2f / %.2f / %.2f", l.P50, l.P99, l.P999)
	if l.Received < l.Sent {
		s += fmt.Sprintf(" (%d of %d)", l.Received, l.Sent)
	}
	return s
}

func peakCell(r *Result) string {
	var parts []string
	for _, name := range sortedNames(r.PeakRSSMiB) {
		parts = append(parts, fmt.Sprintf("%s %.0f", name, r.PeakRSSMiB[name]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func sortedNames(m map[string]float64) []string { return slices.Sorted(maps.Keys(m)) }

// latencyCells are r's latency figures in the report's columns: one per fixed rate, then
// the relative load ("-" where r has none).
func latencyCells(rep *Report, r *Result) []string {
	var cells []string
	find := func(match func(Latency) bool) string {
		for _, l := range r.Latency {
			if match(l) {
				return latencyCell(l)
			}
		}
		return "-"
	}
	for _, rate := range rep.Rates {
		cells = append(cells, find(func(l Latency) bool { return !l.Relative && l.Rate == rate }))
	}
	return append(cells, find(func(l Latency) bool { return l.Relative }))
}

// idleCell is the largest stage's RSS once the load has passed, with its anonymous part.
func idleCell(r *Result) string {
	if r.IdleRSSMiB == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f (%.0f)", r.IdleRSSMiB, r.IdleAnonMiB)
}

// anonCell is the stages' peak anonymous RSS at saturation and at the first fixed load.
func anonCell(r *Result) string {
	if r.LoadAnonMiB == 0 {
		return "-"
	}
	if r.LowAnonMiB == 0 {
		return fmt.Sprintf("%.0f / -", r.LoadAnonMiB)
	}
	return fmt.Sprintf("%.0f / %.0f", r.LoadAnonMiB, r.LowAnonMiB)
}

func resultCell(r *Result) string {
	if r.AgentCalls > 0 {
		return fmt.Sprintf("%.0f (%d agent calls, last after %.1f s)", r.EventsPerSec, r.AgentCalls, r.TaskSeconds)
	}
	return fmt.Sprintf("%.0f", r.EventsPerSec)
}

func table(w io.Writer, rep *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "SCENARIO\tEVENTS/S\tRATIO"
	for _, r := range rep.Rates {
		head += fmt.Sprintf("\tP50/P99/P99.9 MS @%d/S", r)
	}
	head += fmt.Sprintf("\tP50/P99/P99.9 MS @%d/S (%.0f%% OF %s)", rep.RelativeRate, rep.Relative*100, relativeTo)
	fmt.Fprintln(tw, head+"\tCPU S/10K (STAGES, NATS)\tPEAK RSS MIB\tIDLE RSS (ANON) MIB\tANON MIB (SATURATION / FIRST RATE)")
	for _, r := range rep.Results {
		line := fmt.Sprintf("%s\t%s\t%s\t%s", r.Name, resultCell(r), fmtRatio(r), strings.Join(latencyCells(rep, r), "\t"))
		fmt.Fprintf(tw, "%s\t%.2f, %.2f\t%s\t%s\t%s\n", line, r.CPUPer10k, r.NATSCPUPer10k, peakCell(r), idleCell(r), anonCell(r))
	}
	_ = tw.Flush()
	for _, r := range rep.Results {
		for _, p := range r.Scale {
			fmt.Fprintf(w, "scale: %d %s(s): %.0f events/s, %.2f× %s, backlog %d\n", p.Replicas, p.Stage, p.EventsPerSec, p.Efficiency,
				map[string]string{"dispatcher": "linear", "mapper": "offered"}[p.Stage], p.Backlog)
		}
	}
}

func markdown(rep *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# khook benchmark results\n\n%s, %s, %d CPUs. %d events per saturation run; offered loads of %v events/s, and %d/s (%.0f%% of %s's capacity in this run), for %.0f s each; 1 KiB events. Produced by `make bench` (`go run ./cmd/khook-bench`); see docs/benchmarks.md.\n\n",
		rep.Date.Format("2006-01-02 15:04 UTC"), rep.GoVersion, rep.CPUs, rep.Events, rep.Rates, rep.RelativeRate, rep.Relative*100, relativeTo, rep.RateSecs)
	b.WriteString("| scenario | what | events/s | ratio to raw |")
	for _, r := range rep.Rates {
		fmt.Fprintf(&b, " p50 / p99 / p99.9 ms at %d/s |", r)
	}
	fmt.Fprintf(&b, " p50 / p99 / p99.9 ms at %d/s (%.0f%% of %s) |", rep.RelativeRate, rep.Relative*100, relativeTo)
	b.WriteString(" CPU s per 10k events (stages, NATS) | peak RSS MiB | idle RSS (anonymous) MiB | peak anonymous RSS MiB, saturation / first fixed load |\n|---|---|---:|---|")
	for range len(rep.Rates) + 1 {
		b.WriteString("---|")
	}
	b.WriteString("---|---|---:|---:|\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |", r.Name, r.Description, resultCell(r), fmtRatio(r))
		for _, c := range latencyCells(rep, r) {
			fmt.Fprintf(&b, " %s |", c)
		}
		fmt.Fprintf(&b, " %.2f, %.2f | %s | %s | %s |\n", r.CPUPer10k, r.NATSCPUPer10k, peakCell(r), idleCell(r), anonCell(r))
	}
	b.WriteString("\n![throughput and latency per scenario](results.png)\n")
	for _, r := range rep.Results {
		if len(r.Scale) > 0 {
			b.WriteString(scaleMarkdown(r))
			b.WriteString("\n![events/s per replica count](results-scale.png)\n")
		}
		if f := r.FanIn; f != nil {
			fmt.Fprintf(&b, "\n## Many clusters (`fan-in`)\n\nA hub's raw stream sourcing %d edges over leaf node connections (nats-server processes "+
				"configured as `khook edge` and a hub configure theirs).\n\n| figure | value |\n|---|---:|\n"+
				"| backlog per edge, stored before the hub sourced it | %.1f MiB (%d events) |\n"+
				"| catch-up: the hub storing all %d backlogs | %.1f s, %.1f MiB/s |\n"+
				"| live: every edge publishing %d events at once, stored at the hub | %.0f events/s (%s) |\n",
				f.Edges, f.BacklogMiB, f.BacklogEvents, f.Edges, f.CatchUpSeconds, f.CatchUpMiBPerSec, f.LiveEvents, r.EventsPerSec, fmtRatio(r))
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
