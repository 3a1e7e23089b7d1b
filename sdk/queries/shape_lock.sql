-- Serialises shape syncs of all workers ("pgflow shapes" as a key).
SELECT pg_advisory_xact_lock(7083402711633732403)
