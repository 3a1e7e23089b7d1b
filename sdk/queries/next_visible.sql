SELECT pgflow.next_visible_at($1, $2)
