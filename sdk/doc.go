// Package sdk is the pgflow runtime: schema migration, and (as it grows)
// the worker that runs flow handlers and the client that starts and waits
// for runs.
//
// All state lives in PostgreSQL, in the pgflow schema that Migrate installs.
// See the repository README for the whole picture.
package sdk
