package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// usageError is a mistake in how nvictl was called; it exits with status 2
// and the command's usage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// command is one nvictl subcommand.
type command struct {
	name  string
	args  string // positional arguments, for the usage line
	help  string
	flags func(fs *flag.FlagSet)
	run   func(env *env, fs *flag.FlagSet, args []string) error
	sub   []command // a group: the rest of the arguments go to one of these
}

// parse reads flags and positional arguments in any order, the way people
// type them ("net create acme/web --cidr 10.1.0.0/24").
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// dispatch finds and runs a subcommand from a list.
func dispatch(e *env, path string, cmds []command, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printCommands(e.stdout, path, cmds)
		if len(args) == 0 {
			return usagef("%s: which command?", path)
		}
		return nil
	}
	for _, c := range cmds {
		if c.name != args[0] {
			continue
		}
		if c.sub != nil {
			return dispatch(e, path+" "+c.name, c.sub, args[1:])
		}
		fs := flag.NewFlagSet(path+" "+c.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if c.flags != nil {
			c.flags(fs)
		}
		pos, err := parse(fs, args[1:])
		if errors.Is(err, flag.ErrHelp) {
			printUsage(e.stdout, path, c, fs)
			return nil
		}
		if err != nil {
			printUsage(e.stderr, path, c, fs)
			return usagef("%s %s: %v", path, c.name, err)
		}
		return c.run(e, fs, pos)
	}
	printCommands(e.stderr, path, cmds)
	return usagef("%s: unknown command %q", path, args[0])
}

func printCommands(w io.Writer, path string, cmds []command) {
	fmt.Fprintf(w, "usage: %s COMMAND ...\n\ncommands:\n", path)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.help)
	}
	tw.Flush()
}

func printUsage(w io.Writer, path string, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s %s %s\n  %s\n", path, c.name, c.args, c.help)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// wantArgs checks the number of positional arguments.
func wantArgs(args []string, n int, what string) error {
	if len(args) != n {
		return usagef("want %s, got %d argument(s)", what, len(args))
	}
	return nil
}

// output prints rows as a table, or v as JSON when -o json was asked for.
type output struct {
	format string
	w      io.Writer
}

func (o *output) register(fs *flag.FlagSet) {
	fs.StringVar(&o.format, "o", "table", "output format: table or json")
}

func (o *output) check() error {
	if o.format != "table" && o.format != "json" {
		return usagef("-o %q: want table or json", o.format)
	}
	return nil
}

func (o *output) print(v any, header []string, rows [][]string) error {
	if err := o.check(); err != nil {
		return err
	}
	if o.format == "json" {
		enc := json.NewEncoder(o.w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
