package gateway

// The subscription index: so that fan-out costs what is delivered, not the
// number of clients, an event is offered only to the clients filed under one
// of its keys. Each client is filed under keys chosen so that every event
// it wants carries at least one of them (the index may hand a client events
// it does not want, which wants then refuses; it must never miss one):
//
//	subscription                     filed under       an event carries
//	where col=v (first condition)    e col v           e col <row's col>, for filed columns
//	types T...                       y T ...           y <type>
//	tables t... (t with a rule)      v t <value>...    v <table> <row's rule column>
//	tables t... (t without a rule)   t t               t <table>
//	everything                       n, and v t <value> for each rule table
//	                                                   n, when its table has no rule
//
// where a value is one the client's user may see. A client whose user sees
// nothing of a rule table is filed under no key of it.

import "strings"

type index struct {
	rules   map[string]Rule // by table
	buckets map[string]map[*client]struct{}
	cols    map[string]int // where columns clients are filed by, and how many keys use each
}

func newIndex(rules []Rule) index {
	x := index{rules: map[string]Rule{}, buckets: map[string]map[*client]struct{}{}, cols: map[string]int{}}
	for _, r := range rules {
		x.rules[r.Table] = r
	}
	return x
}

func ikey(kind byte, parts ...string) string {
	var b strings.Builder
	b.WriteByte(kind)
	for _, p := range parts {
		b.WriteByte(0)
		b.WriteString(p)
	}
	return b.String()
}

// keysOf chooses c's keys (see the table above).
func (x *index) keysOf(c *client) (keys, cols []string) {
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	visible := func(table string) {
		if v := c.view[table]; v != nil {
			for val := range v.values {
				add(ikey('v', table, val))
			}
		}
	}
	for _, s := range c.subs {
		switch {
		case len(s.Where) > 0:
			w := s.Where[0]
			k := ikey('e', w.Column, w.Value)
			if !seen[k] {
				cols = append(cols, w.Column)
			}
			add(k)
		case s.Types != nil:
			for t := range s.Types {
				add(ikey('y', t))
			}
		case s.Tables != nil:
			for t := range s.Tables {
				if _, ruled := x.rules[t]; ruled {
					visible(t)
				} else {
					add(ikey('t', t))
				}
			}
		default:
			add("n")
			for t := range x.rules {
				visible(t)
			}
		}
	}
	return keys, cols
}

func (x *index) add(c *client) {
	c.keys, c.cols = x.keysOf(c)
	for _, k := range c.keys {
		b := x.buckets[k]
		if b == nil {
			b = map[*client]struct{}{}
			x.buckets[k] = b
		}
		b[c] = struct{}{}
	}
	for _, col := range c.cols {
		x.cols[col]++
	}
}

func (x *index) remove(c *client) {
	for _, k := range c.keys {
		if b := x.buckets[k]; b != nil {
			delete(b, c)
			if len(b) == 0 {
				delete(x.buckets, k)
			}
		}
	}
	for _, col := range c.cols {
		if x.cols[col]--; x.cols[col] <= 0 {
			delete(x.cols, col)
		}
	}
	c.keys, c.cols = nil, nil
}

// eventKeys lists the keys e carries.
func (x *index) eventKeys(e *entry) []string {
	keys := make([]string, 0, 4+len(x.cols))
	keys = append(keys, ikey('y', e.Type), ikey('t', e.Table))
	if r, ruled := x.rules[e.Table]; ruled {
		if v, ok := e.column(r.Column); ok {
			keys = append(keys, ikey('v', e.Table, v))
		}
	} else {
		keys = append(keys, "n")
	}
	for col := range x.cols {
		if v, ok := e.column(col); ok {
			keys = append(keys, ikey('e', col, v))
		}
	}
	return keys
}

// each calls fn for every client filed under one of e's keys; a client
// filed under several may be called more than once.
func (x *index) each(e *entry, fn func(*client)) {
	for _, k := range x.eventKeys(e) {
		for c := range x.buckets[k] {
			fn(c)
		}
	}
}
