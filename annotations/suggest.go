package annotations

import (
	"strings"
	"unicode/utf8"
)

// maxHintDistance is the largest edit distance at which a known name is
// suggested for a misspelt one.
const maxHintDistance = 2

// suggest returns the known name closest to s, comparing case-insensitively,
// when it is at most maxHintDistance edits away; ties go to the earlier name.
func suggest(s string, known []string) (string, bool) {
	best, bestDist := "", maxHintDistance+1
	for _, k := range known {
		if d := distance(strings.ToLower(s), strings.ToLower(k), bestDist); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best, best != ""
}

// distance returns the Levenshtein distance between a and b, counted in
// runes, or limit when it is limit or more.
func distance(a, b string, limit int) int {
	if n, m := utf8.RuneCountInString(a), utf8.RuneCountInString(b); n-m >= limit || m-n >= limit {
		return limit
	}
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return min(prev[len(rb)], limit)
}
