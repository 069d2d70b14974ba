package main

import (
	"context"
	"fmt"
	"image/color"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
)

// The scale scenario measures what the mission promises: producers and consumers scale
// separately. Replicas share one durable consumer each, as they do in the chart.
//
//   - Dispatchers: 1, 2 and 4 replicas against an agent that takes scaleCallDelay per call,
//     so that the calls, not the machine's two cores, bound one replica: each makes at most
//     scaleWorkers calls at once. Linear is replicas × one replica's rate.
//   - Mappers: 1, 2 and 4 replicas at a fixed offered load below one replica's capacity:
//     each count must meet it with no backlog left when the offer ends.
const (
	scaleCallDelay  = 50 * time.Millisecond
	scaleWorkers    = 8
	scaleMapperRate = 2000 // events/s offered to the mappers
)

var scaleReplicas = []int{1, 2, 4}

// ScalePoint is one replica count's run.
type ScalePoint struct {
	Stage        string  `json:"stage"` // dispatcher or mapper
	Replicas     int     `json:"replicas"`
	Events       int     `json:"events"`
	EventsPerSec float64 `json:"eventsPerSec"`
	// Efficiency is EventsPerSec over replicas × the one-replica rate (dispatchers), or over
	// the offered rate (mappers).
	Efficiency float64 `json:"efficiency"`
	// Offered is the fixed load (mappers), and Backlog the events the mappers' consumer
	// still had pending or unacknowledged when the offer ended.
	Offered int     `json:"offered,omitempty"`
	Backlog uint64  `json:"backlog"`
	P99ms   float64 `json:"p99ms,omitempty"`
}

func khookScale(e *env, r *Result) error {
	for _, n := range scaleReplicas {
		p, err := scaleRun(e, fmt.Sprintf("dispatcher-%d", n), func(s *env) (ScalePoint, error) { return scaleDispatchers(s, n) })
		if err != nil {
			return err
		}
		r.Scale = append(r.Scale, p)
	}
	for _, n := range scaleReplicas {
		p, err := scaleRun(e, fmt.Sprintf("mapper-%d", n), func(s *env) (ScalePoint, error) { return scaleMappers(s, n) })
		if err != nil {
			return err
		}
		r.Scale = append(r.Scale, p)
	}
	one := r.Scale[0].EventsPerSec
	for i := range r.Scale {
		if p := &r.Scale[i]; p.Stage == "dispatcher" && one > 0 {
			p.Efficiency = p.EventsPerSec / (float64(p.Replicas) * one)
		}
	}
	// The scenario's own figure: four dispatchers' rate.
	for _, p := range r.Scale {
		if p.Stage == "dispatcher" {
			r.Events, r.EventsPerSec = p.Events, p.EventsPerSec
		}
	}
	return nil
}

// scaleRun runs one replica count in an environment of its own (a fresh NATS server and
// agent), so one count's leftovers do not slow the next.
func scaleRun(e *env, name string, run func(*env) (ScalePoint, error)) (ScalePoint, error) {
	s, err := newEnv(e.cfg, e.name+"-"+name)
	if err != nil {
		return ScalePoint{}, err
	}
	defer s.close()
	p, err := run(s)
	if err != nil {
		return p, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

func scaleDispatchers(s *env, replicas int) (ScalePoint, error) {
	cfg, err := s.khookConfig(freePort())
	if err != nil {
		return ScalePoint{}, err
	}
	s.stageEnv = []string{fmt.Sprintf("KHOOK_DISPATCHER_WORKERS=%d", scaleWorkers),
		fmt.Sprintf("KHOOK_DISPATCHER_PER_TARGET_CONCURRENCY=%d", scaleWorkers)}
	s.agent.OnMessage = func(r demoagent.Received) error {
		id, _, _ := strings.Cut(r.Text, "\n")
		s.recv.add(id, r.At)
		time.Sleep(scaleCallDelay) // the agent's work; what bounds a replica
		return nil
	}
	for i := range replicas {
		if err := s.khookReplica(fmt.Sprintf("dispatcher-%d", i), "dispatcher", cfg); err != nil {
			return ScalePoint{}, err
		}
	}
	// About six seconds of work at the linear rate.
	n := int(6 * float64(replicas*scaleWorkers) / scaleCallDelay.Seconds())
	ids := s.ids(n)
	start := time.Now()
	failed := offer(n, jsInflight, func(i int) error { return s.publish("khook.events.deploy-failed", ids[i], normalized(ids[i]), nil) })
	if _, err := s.recv.waitAll(ids, s.cfg.timeout, s.exited); err != nil {
		return ScalePoint{}, fmt.Errorf("%w (%d publishes failed)", err, failed)
	}
	last := start
	for _, id := range ids {
		if t, _ := s.recv.get(id); t.After(last) {
			last = t
		}
	}
	return ScalePoint{Stage: "dispatcher", Replicas: replicas, Events: n, EventsPerSec: float64(n) / last.Sub(start).Seconds()}, nil
}

func scaleMappers(s *env, replicas int) (ScalePoint, error) {
	cfg, err := s.khookConfig(freePort())
	if err != nil {
		return ScalePoint{}, err
	}
	for i := range replicas {
		if err := s.khookReplica(fmt.Sprintf("mapper-%d", i), "mapper", cfg); err != nil {
			return ScalePoint{}, err
		}
	}
	sub, err := s.nc.Subscribe("khook.events.>", func(m *nats.Msg) {
		s.recv.add(strings.TrimPrefix(m.Header.Get(jetstream.MsgIDHeader), "webhook/"), time.Now())
	})
	if err != nil {
		return ScalePoint{}, err
	}
	defer sub.Unsubscribe()
	n := int(s.cfg.rateDuration.Seconds() * scaleMapperRate)
	ids := s.ids(n)
	sent := make([]time.Time, n)
	interval := time.Second / scaleMapperRate
	start := time.Now()
	sem := make(chan struct{}, jsInflight)
	for i, id := range ids {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d) // pacing the offered load, not synchronisation
		}
		sent[i] = due
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			_ = s.publish("khook.raw.webhook.deploy-failed", id, rawEnvelope(id), nil)
		}()
	}
	// The backlog when the offer ends: what the mappers have not yet settled.
	var backlog uint64
	if cons, err := s.js.Consumer(context.Background(), "KHOOK_RAW", "khook-mapper"); err == nil {
		if info, err := cons.Info(context.Background()); err == nil {
			backlog = info.NumPending + uint64(info.NumAckPending)
		}
	}
	if _, err := s.recv.waitAll(ids, s.cfg.timeout, s.exited); err != nil {
		return ScalePoint{}, err
	}
	var lat []time.Duration
	last := start
	for i, id := range ids {
		t, _ := s.recv.get(id)
		lat = append(lat, t.Sub(sent[i]))
		if t.After(last) {
			last = t
		}
	}
	rate := float64(n) / last.Sub(start).Seconds()
	return ScalePoint{Stage: "mapper", Replicas: replicas, Events: n, EventsPerSec: rate, Offered: scaleMapperRate,
		Efficiency: rate / scaleMapperRate, Backlog: backlog, P99ms: summarize(scaleMapperRate, n, lat).P99}, nil
}

// normalized is a normalized event as the mapper writes it, for the dispatcher's runs.
func normalized(id string) []byte {
	ev := mapping.Event{ID: id, Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
		Namespace: "bench", Resource: mapping.Resource{Name: id}, Message: "rollout stuck", Time: time.Now().UTC(), Data: payload(id)}
	body, _ := ev.Encode()
	return body
}

// scaleMarkdown is the scale table of results.md.
func scaleMarkdown(r *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Replicas (`scale`)\n\nDispatchers against an agent that takes %s per call, %d calls at once per replica; "+
		"mappers at a fixed %d events/s offered for %s.\n\n", scaleCallDelay, scaleWorkers, scaleMapperRate, "the rate duration")
	b.WriteString("| stage | replicas | events | events/s | efficiency | backlog when the offer ended | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range r.Scale {
		eff := fmt.Sprintf("%.2f× linear", p.Efficiency)
		if p.Stage == "mapper" {
			eff = fmt.Sprintf("%.2f× offered", p.Efficiency)
		}
		p99, backlog := "-", "-"
		if p.Stage == "mapper" {
			p99, backlog = fmt.Sprintf("%.2f", p.P99ms), fmt.Sprint(p.Backlog)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %s | %s | %s |\n", p.Stage, p.Replicas, p.Events, p.EventsPerSec, eff, backlog, p99)
	}
	return b.String()
}

// plotScale draws events/s per replica count for each stage beside linear, into its own PNG.
func plotScale(r *Result, path string) error {
	p := plot.New()
	p.Title.Text = "events/s per replica count"
	p.X.Label.Text = "replicas"
	p.Y.Label.Text = "events/s"
	series := map[string]plotter.XYs{}
	for _, pt := range r.Scale {
		series[pt.Stage] = append(series[pt.Stage], plotter.XY{X: float64(pt.Replicas), Y: pt.EventsPerSec})
	}
	colors := map[string]color.Color{"dispatcher": khookColor, "mapper": pctColors[0]}
	for _, stage := range slices.Sorted(maps.Keys(series)) {
		line, points, err := plotter.NewLinePoints(series[stage])
		if err != nil {
			return err
		}
		line.Color, points.Color = colors[stage], colors[stage]
		p.Add(line, points)
		label := stage + "s against a 50 ms agent"
		if stage == "mapper" {
			label = fmt.Sprintf("mappers at %d events/s offered", scaleMapperRate)
		}
		p.Legend.Add(label, line, points)
	}
	if d := series["dispatcher"]; len(d) > 0 {
		var linear plotter.XYs
		for _, xy := range d {
			linear = append(linear, plotter.XY{X: xy.X, Y: xy.X * d[0].Y})
		}
		line, err := plotter.NewLine(linear)
		if err != nil {
			return err
		}
		line.Color, line.Dashes = rawColor, []vg.Length{vg.Points(4), vg.Points(4)}
		p.Add(line)
		p.Legend.Add("dispatchers, linear", line)
	}
	// Room above the highest line for the legend.
	top := 0.0
	for _, pt := range r.Scale {
		top = max(top, pt.EventsPerSec, float64(pt.Replicas)*r.Scale[0].EventsPerSec)
	}
	p.Y.Min, p.Y.Max = 0, top*1.4
	p.Legend.Top, p.Legend.Left = true, true
	return p.Save(8*vg.Inch, 4*vg.Inch, path)
}
