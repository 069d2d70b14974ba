package streams

// Headers that mark a replayed event. The replay sets them on the copy it sends, the
// mapper carries them from the raw event to the normalized one, and the dispatcher reads
// them, so a replayed event can be told apart from its original at every stage.
const (
	HeaderReplayID          = "Khook-Replay-Id"
	HeaderOriginalID        = "Khook-Original-Id"
	HeaderOriginalSeq       = "Khook-Original-Seq"
	HeaderIgnoreSuppression = "Khook-Ignore-Suppression"
)

// ReplayHeaders are the headers a stage passes on from its input to its output.
var ReplayHeaders = []string{HeaderReplayID, HeaderOriginalID, HeaderOriginalSeq, HeaderIgnoreSuppression}
