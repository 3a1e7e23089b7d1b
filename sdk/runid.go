package sdk

import (
	"encoding/hex"
	"fmt"
)

// RunID identifies a run (a UUID). The ids the database assigns are
// version 7 UUIDs, which sort by the time their run started.
type RunID [16]byte

// String formats the id as a canonical UUID (8-4-4-4-12 hex digits).
func (id RunID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:], id[10:])
	return string(b[:])
}

// IsZero reports whether the id is the zero value.
func (id RunID) IsZero() bool { return id == RunID{} }

// ParseRunID parses a UUID in canonical form (with or without hyphens).
func ParseRunID(s string) (RunID, error) {
	var id RunID
	clean := make([]byte, 0, 32)
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		clean = append(clean, s[i])
	}
	if len(clean) != 32 {
		return id, fmt.Errorf("invalid run id %q: want a UUID", s)
	}
	if _, err := hex.Decode(id[:], clean); err != nil {
		return id, fmt.Errorf("invalid run id %q: %w", s, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler.
func (id RunID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *RunID) UnmarshalText(b []byte) error {
	parsed, err := ParseRunID(string(b))
	if err != nil {
		return err
	}
	*id = parsed
	return nil
}
