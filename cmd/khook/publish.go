package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
)

// publishCmd is `khook publish`: the out-of-process plugin's way in. It publishes one
// event (--data), or one event per line of newline-delimited JSON on stdin, to
// <prefix>.raw.<source>.<type>, exactly as built-in plugins do, and prints each stored id.
func publishCmd() *cobra.Command {
	return leaf("publish", "publish events from a script or an out-of-process plugin", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		source := fs.String("source", "", "the plugin's name: the source token of its events (required)")
		eventType := fs.String("type", "", "the event type, when the data has no \"type\" field")
		id := fs.String("id", "", "the event id (default: the CloudEvents id, else a hash of the event)")
		subj := fs.String("subject", "", "the CloudEvents subject, namespace/kind/name")
		data := fs.String("data", "", "one event's data as a JSON object; without it, events are read from stdin, one JSON object per line")
		user := fs.String("user", "", "NATS user (an embedded server's plugin user is the plugin's name)")
		passwordFile := fs.String("password-file", "", "file holding the NATS password")
		timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for each event to be stored")
		wait := fs.Duration("wait", 0, "with --data: also wait this long for the mapper to take the event (a pipeline check, as helm test makes)")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			if *source == "" {
				return usageError{error: errors.New("--source is required")}
			}
			cfg, err := config.Load(common.config, environ(), common.opsOverrides())
			if err != nil {
				return err
			}
			// The server reports a publish it refuses asynchronously; the handler records it and
			// ends the wait for an acknowledgement that will never come.
			var denied atomic.Value
			var cancelWait atomic.Pointer[context.CancelFunc]
			extra := []nats.Option{nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				if err != nil && strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
					denied.Store(err)
					if c := cancelWait.Load(); c != nil {
						(*c)()
					}
				}
			})}
			if *user != "" {
				pw := ""
				if *passwordFile != "" {
					b, err := os.ReadFile(*passwordFile)
					if err != nil {
						return fmt.Errorf("--password-file: %w", err)
					}
					pw = strings.TrimSpace(string(b))
				}
				extra = append(extra, nats.UserInfo(*user, pw))
			}
			nc, js, err := app.Connect(cfg, extra...)
			if err != nil {
				return err
			}
			defer nc.Close()
			pub := producers.NewPublisher(js, cfg.Streams.Subjects(), producers.NewMetrics(prometheus.NewRegistry())).InCluster(cfg.Cluster)
			watch, stopWatch := context.WithCancel(ctx)
			defer stopWatch()
			go func() { _ = pub.Run(watch) }()
			emit := pub.Emitter(*source)

			publish := func(line []byte, where string) error {
				ev, err := eventFromJSON(line, *eventType, *id, *subj)
				if err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				pctx, cancel := context.WithTimeout(ctx, *timeout)
				defer cancel()
				cancelWait.Store(&cancel)
				res, err := emit(pctx, ev)
				if d := denied.Load(); d != nil {
					return fmt.Errorf("%s: permission denied: %v (plugin %q may publish only to its own subjects)", where, d, *source)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				out, _ := json.Marshal(map[string]any{"id": res.ID, "duplicate": res.Duplicate})
				fmt.Fprintln(stdout, string(out))
				if *wait > 0 {
					return waitMapped(ctx, js, cfg.Streams, *source, ev.Type, *wait, stdout)
				}
				return nil
			}
			if *data != "" {
				return publish([]byte(*data), "--data")
			}
			if *wait > 0 {
				return usageError{error: errors.New("--wait needs --data: it follows one event")}
			}
			sc := bufio.NewScanner(os.Stdin)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			// With --id, every line would get the same id and all but the first would be dropped as
			// duplicates; so --id takes exactly one event, and nothing is published otherwise.
			var held []byte
			heldAt := 0
			for n := 1; sc.Scan(); n++ {
				line := strings.TrimSpace(sc.Text())
				if line == "" {
					continue
				}
				if *id != "" {
					if held != nil {
						return fmt.Errorf("--id names one event, but stdin has more than one (lines %d and %d): give each line its own CloudEvents \"id\", or publish one event with --data", heldAt, n)
					}
					held, heldAt = []byte(line), n
					continue
				}
				if err := publish([]byte(line), fmt.Sprintf("stdin line %d", n)); err != nil {
					return err
				}
			}
			if err := sc.Err(); err != nil {
				return fmt.Errorf("stdin: %w", err)
			}
			if held != nil {
				return publish(held, fmt.Sprintf("stdin line %d", heldAt))
			}
			return nil
		}
	})
}

// eventFromJSON reads one event: a CloudEvent in structured JSON (it has "specversion"), or
// a plain JSON object whose "type" field, or typ, is the event type.
func eventFromJSON(b []byte, typ, id, subj string) (producers.Event, error) {
	var probe struct {
		SpecVersion string          `json:"specversion"`
		Type        json.RawMessage `json:"type"`
	}
	if err := json.Unmarshal(b, &probe); err != nil || len(b) == 0 || b[0] != '{' {
		return producers.Event{}, fmt.Errorf("%w: not a JSON object", producers.ErrInvalidEvent)
	}
	ev := producers.Event{ID: id, Type: typ, Subject: subj, Data: b}
	if probe.SpecVersion != "" {
		ce, err := cloudevent.Decode(b)
		if err != nil {
			return producers.Event{}, err
		}
		ev = producers.Event{ID: ce.ID, Type: ce.Type, Subject: ce.Subject, Time: ce.Time, Data: ce.Data}
		if id != "" {
			ev.ID = id
		}
		return ev, nil
	}
	if ev.Type == "" && len(probe.Type) > 0 {
		if err := json.Unmarshal(probe.Type, &ev.Type); err != nil {
			return producers.Event{}, fmt.Errorf(`%w: "type" must be a string`, producers.ErrInvalidEvent)
		}
	}
	if ev.Type == "" {
		return producers.Event{}, fmt.Errorf(`%w: no event type: give --type or a "type" field`, producers.ErrInvalidEvent)
	}
	return ev, nil
}

// waitMapped waits until the mapper's consumer has acknowledged the newest raw event of
// source and type: the event went from a producer's subject through the mapper, whatever
// the mappings made of it. Mapped or dropped, an acknowledged event proves the stages are
// connected, which is what an install check needs; what the agent does is the Hook's part.
func waitMapped(ctx context.Context, js jetstream.JetStream, topo streams.Config, source, eventType string, wait time.Duration, stdout io.Writer) error {
	subj, err := topo.Subjects().Raw(source, eventType)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	st, err := js.Stream(ctx, topo.Raw.Name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", topo.Raw.Name, err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		return fmt.Errorf("the event on %s: %w", subj, err)
	}
	start := time.Now()
	for {
		cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
		if err == nil {
			info, err := cons.Info(ctx)
			if err == nil && info.AckFloor.Stream >= msg.Sequence {
				fmt.Fprintf(stdout, "the mapper took the event (stream sequence %d) after %s\n", msg.Sequence, time.Since(start).Round(time.Millisecond))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the mapper did not take the event (stream sequence %d) within %s: is the mapper running? (khook status)", msg.Sequence, wait)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
