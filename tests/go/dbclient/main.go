// dbclient: a Go application's view of a database behind tpemu, with Debian's drivers
// (github.com/lib/pq, github.com/go-sql-driver/mysql) through database/sql, built offline in
// GOPATH mode from /usr/share/gocode by tests/e2e/test_db_go_client.py.
//
// Usage: dbclient postgres|mysql DSN
//
// It creates a table, runs a server-side prepared statement (Prepare, then Exec/QueryRow with
// parameters), commits one transaction and rolls back another, and prints one line per check
// ("prepared 2 two", "committed 3", "rolled back 3"); any error exits 1 with the driver's message.
package main

import (
	"database/sql"
	"fmt"
	"os"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dbclient postgres|mysql DSN")
		os.Exit(2)
	}
	driver, dsn := os.Args[1], os.Args[2]
	ph := func(n int) string { return fmt.Sprintf("$%d", n) }
	if driver == "mysql" {
		ph = func(int) string { return "?" }
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		fail("open", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // one connection: the prepared statement and the transactions share it
	if _, err := db.Exec("DROP TABLE IF EXISTS go_items"); err != nil {
		fail("drop", err)
	}
	if _, err := db.Exec("CREATE TABLE go_items (id INT PRIMARY KEY, name VARCHAR(20))"); err != nil {
		fail("create", err)
	}
	insert, err := db.Prepare("INSERT INTO go_items (id, name) VALUES (" + ph(1) + ", " + ph(2) + ")")
	if err != nil {
		fail("prepare insert", err)
	}
	for i, name := range []string{"one", "two"} {
		if _, err := insert.Exec(i+1, name); err != nil {
			fail("exec prepared insert", err)
		}
	}
	lookup, err := db.Prepare("SELECT id, name FROM go_items WHERE id = " + ph(1))
	if err != nil {
		fail("prepare select", err)
	}
	var id int
	var name string
	if err := lookup.QueryRow(2).Scan(&id, &name); err != nil {
		fail("query prepared select", err)
	}
	fmt.Printf("prepared %d %s\n", id, name)

	tx, err := db.Begin()
	if err != nil {
		fail("begin", err)
	}
	if _, err := tx.Exec("INSERT INTO go_items (id, name) VALUES (3, 'three')"); err != nil {
		fail("insert in transaction", err)
	}
	if err := tx.Commit(); err != nil {
		fail("commit", err)
	}
	count := func() int {
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM go_items").Scan(&n); err != nil {
			fail("count", err)
		}
		return n
	}
	fmt.Printf("committed %d\n", count())

	tx, err = db.Begin()
	if err != nil {
		fail("begin", err)
	}
	if _, err := tx.Exec("DELETE FROM go_items"); err != nil {
		fail("delete in transaction", err)
	}
	if err := tx.Rollback(); err != nil {
		fail("rollback", err)
	}
	fmt.Printf("rolled back %d\n", count())
}
