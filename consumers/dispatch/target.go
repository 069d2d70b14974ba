package dispatch

import (
	"context"
	"errors"

	"go.uber.org/zap"
)

// Target delivers tasks to agents. Deliver returns nil once the agent accepted the task; an
// error wrapped with Permanent is not worth retrying, any other error is.
type Target interface {
	Name() string
	Deliver(ctx context.Context, t Task) error
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure that retrying cannot fix.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// LogTarget prints tasks instead of calling agents: for local runs without kagent.
type LogTarget struct{ Logger *zap.Logger }

// Name implements Target.
func (LogTarget) Name() string { return "log" }

// Deliver implements Target.
func (l LogTarget) Deliver(_ context.Context, t Task) error {
	l.Logger.Info("task", zap.String("hook", t.Hook), zap.String("agent", t.Agent.Namespace+"/"+t.Agent.Name),
		zap.String("event_id", t.Event.ID), zap.String("message_id", t.MessageID), zap.String("text", t.Text))
	return nil
}
