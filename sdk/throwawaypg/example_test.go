package throwawaypg_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgflow-go/pgflow/sdk/throwawaypg"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	srv, err := throwawaypg.New(ctx, throwawaypg.Options{Fast: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	url, err := srv.CreateDatabase(ctx, "demo")
	if err != nil {
		fmt.Println(err)
		return
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close(ctx)

	var db string
	var sum int
	if err := conn.QueryRow(ctx, "SELECT current_database(), 1 + 1").Scan(&db, &sum); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(db, sum)
	// Output: demo 2
}
