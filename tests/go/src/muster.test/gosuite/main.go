// Command gosuite runs the official Go etcd client (go.etcd.io/etcd/clientv3 3.4, from
// Debian's golang-etcd-server-dev, built in GOPATH mode) against a Muster cluster: the
// patterns Go services use on etcd. Run by tests/t22_go_client.rs.
//
// Usage: gosuite ENDPOINTS [SCENARIO...]   (ENDPOINTS comma-separated host:port)
//
// Prints "PASS name" or "FAIL name: why" per scenario and exits 1 when any failed.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
)

type scenario struct {
	name string
	run  func(ctx context.Context, c *clientv3.Client, eps []string) error
}

var scenarios = []scenario{
	{"kv_range_options", kvRangeOptions},
	{"txn_nested", txnNested},
	{"stm_serializable", func(ctx context.Context, c *clientv3.Client, _ []string) error {
		return stmCounter(ctx, c, "stm/ser", true)
	}},
	{"stm_snapshot", func(ctx context.Context, c *clientv3.Client, _ []string) error {
		return stmCounter(ctx, c, "stm/snap", false)
	}},
	{"lease_keepalive_and_expiry", leaseKeepAliveAndExpiry},
	{"watch", watchScenarios},
	{"mutex_three_contenders", mutexThreeContenders},
	{"election", election},
	{"leasing_kv", leasingKV},
	{"mirror", mirrorSyncer},
	{"naming_endpoints_and_resolver", namingEndpointsAndResolver},
	{"cluster_maintenance", clusterMaintenance},
}

// Run only when named: they need the caller's help.
var onDemand = []scenario{
	{"failover_first_endpoint", failoverFirstEndpoint},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gosuite ENDPOINTS [SCENARIO...]")
		os.Exit(2)
	}
	eps := strings.Split(os.Args[1], ",")
	only := map[string]bool{}
	for _, n := range os.Args[2:] {
		only[n] = true
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Println("FAIL dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	failed := 0
	all := scenarios
	if len(only) > 0 {
		all = append(append([]scenario{}, scenarios...), onDemand...)
	}
	for _, s := range all {
		if len(only) > 0 && !only[s.name] {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		started := time.Now()
		err := s.run(ctx, c, eps)
		cancel()
		if err != nil {
			fmt.Printf("FAIL %s: %v\n", s.name, err)
			failed++
		} else {
			fmt.Printf("PASS %s (%s)\n", s.name, time.Since(started).Round(time.Millisecond))
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// check fails with the formatted message unless ok.
func check(ok bool, format string, args ...interface{}) error {
	if ok {
		return nil
	}
	return fmt.Errorf(format, args...)
}

// until polls cond every 50 ms until it holds or ctx ends (with what it waited for).
func until(ctx context.Context, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func keys(r *clientv3.GetResponse) []string {
	out := make([]string, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func kvRangeOptions(ctx context.Context, c *clientv3.Client, _ []string) error {
	if _, err := c.Delete(ctx, "kv/", clientv3.WithPrefix()); err != nil {
		return err
	}
	var revs []int64
	for _, k := range []string{"kv/a", "kv/b", "kv/c", "kv/d"} {
		r, err := c.Put(ctx, k, "v-"+k)
		if err != nil {
			return err
		}
		revs = append(revs, r.Header.Revision)
	}
	r, err := c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithLimit(2))
	if err != nil {
		return err
	}
	if err := check(len(r.Kvs) == 2 && r.More && r.Count == 4, "limit 2: %v more=%v count=%d", keys(r), r.More, r.Count); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return err
	}
	if err := check(strings.Join(keys(r), ",") == "kv/d,kv/c,kv/b,kv/a", "descending: %v", keys(r)); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithRev(revs[1]))
	if err != nil {
		return err
	}
	if err := check(len(r.Kvs) == 2, "at revision %d: %v", revs[1], keys(r)); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if err := check(r.Count == 4 && len(r.Kvs) == 0, "count only: %d %v", r.Count, keys(r)); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return err
	}
	if err := check(len(r.Kvs) == 4 && len(r.Kvs[0].Value) == 0, "keys only: %v", r.Kvs); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/c", clientv3.WithFromKey())
	if err != nil {
		return err
	}
	if err := check(len(r.Kvs) >= 2 && string(r.Kvs[0].Key) == "kv/c", "from key: %v", keys(r)); err != nil {
		return err
	}
	r, err = c.Get(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithMinModRev(revs[2]))
	if err != nil {
		return err
	}
	if err := check(strings.Join(keys(r), ",") == "kv/c,kv/d", "min mod revision: %v", keys(r)); err != nil {
		return err
	}
	p, err := c.Put(ctx, "kv/a", "again", clientv3.WithPrevKV())
	if err != nil {
		return err
	}
	if err := check(p.PrevKv != nil && string(p.PrevKv.Value) == "v-kv/a", "prev kv: %v", p.PrevKv); err != nil {
		return err
	}
	d, err := c.Delete(ctx, "kv/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	if err != nil {
		return err
	}
	return check(d.Deleted == 4 && len(d.PrevKvs) == 4, "delete prefix: %d %d", d.Deleted, len(d.PrevKvs))
}

func txnNested(ctx context.Context, c *clientv3.Client, _ []string) error {
	if _, err := c.Put(ctx, "txn/k", "1"); err != nil {
		return err
	}
	// The inner Then and Else write the same key: etcd accepts it (only one runs).
	r, err := c.Txn(ctx).Then(clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Version("txn/k"), "=", 1)},
		[]clientv3.Op{clientv3.OpPut("txn/x", "then")},
		[]clientv3.Op{clientv3.OpPut("txn/x", "else")},
	)).Commit()
	if err != nil {
		return fmt.Errorf("nested then/else: %v", err)
	}
	inner := r.Responses[0].GetResponseTxn()
	if err := check(inner != nil && inner.Succeeded, "inner txn did not take Then: %v", r); err != nil {
		return err
	}
	_, err = c.Txn(ctx).Then(
		clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Version("txn/k"), "=", 2)},
			[]clientv3.Op{clientv3.OpPut("txn/x", "a"), clientv3.OpGet("txn/y")},
			[]clientv3.Op{clientv3.OpPut("txn/x", "b")},
		),
		clientv3.OpPut("txn/y", "y"),
	).Commit()
	if err != nil {
		return fmt.Errorf("nested with a get, then a put: %v", err)
	}
	_, err = c.Txn(ctx).Then(clientv3.OpTxn(nil,
		[]clientv3.Op{clientv3.OpPut("txn/z", "z")},
		[]clientv3.Op{clientv3.OpDelete("txn/z")},
	)).Commit()
	if err != nil {
		return fmt.Errorf("nested put/delete: %v", err)
	}
	g, err := c.Get(ctx, "txn/x")
	if err != nil {
		return err
	}
	if err := check(string(g.Kvs[0].Value) == "b", "txn/x = %q", g.Kvs[0].Value); err != nil {
		return err
	}
	// Still refused: one branch writing a key twice.
	_, err = c.Txn(ctx).Then(clientv3.OpPut("txn/d", "1"), clientv3.OpPut("txn/d", "2")).Commit()
	return check(err != nil && strings.Contains(err.Error(), "duplicate key given in txn request"), "duplicate: %v", err)
}

func leaseKeepAliveAndExpiry(ctx context.Context, c *clientv3.Client, _ []string) error {
	g, err := c.Grant(ctx, 2)
	if err != nil {
		return err
	}
	if _, err := c.Put(ctx, "lease/kept", "v", clientv3.WithLease(g.ID)); err != nil {
		return err
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ch, err := c.KeepAlive(kctx, g.ID)
	if err != nil {
		return err
	}
	// Past the TTL twice over, the key lives because the keep-alives arrive.
	deadline := time.After(4500 * time.Millisecond)
	renewals := 0
wait:
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				return fmt.Errorf("keep-alive channel closed after %d renewals", renewals)
			}
			if resp.TTL <= 0 {
				return fmt.Errorf("keep-alive answered TTL %d", resp.TTL)
			}
			renewals++
		case <-deadline:
			break wait
		}
	}
	if err := check(renewals >= 2, "only %d renewals", renewals); err != nil {
		return err
	}
	ttl, err := c.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil {
		return err
	}
	if err := check(ttl.TTL > 0 && len(ttl.Keys) == 1 && string(ttl.Keys[0]) == "lease/kept", "time to live: %+v", ttl); err != nil {
		return err
	}
	if _, err := c.KeepAliveOnce(ctx, g.ID); err != nil {
		return err
	}
	leases, err := c.Leases(ctx)
	if err != nil {
		return err
	}
	found := false
	for _, l := range leases.Leases {
		found = found || l.ID == g.ID
	}
	if err := check(found, "lease %x not listed", g.ID); err != nil {
		return err
	}
	// Revoked, the lease takes its key at once.
	kcancel()
	if _, err := c.Revoke(ctx, g.ID); err != nil {
		return err
	}
	r, err := c.Get(ctx, "lease/kept")
	if err != nil {
		return err
	}
	if err := check(len(r.Kvs) == 0, "revoked lease's key still there"); err != nil {
		return err
	}
	// Without keep-alives a lease expires and takes its key.
	short, err := c.Grant(ctx, 1)
	if err != nil {
		return err
	}
	if _, err := c.Put(ctx, "lease/short", "v", clientv3.WithLease(short.ID)); err != nil {
		return err
	}
	return until(ctx, "the short lease's key to expire", func() (bool, error) {
		r, err := c.Get(ctx, "lease/short")
		return err == nil && len(r.Kvs) == 0, err
	})
}

func sortedStrings(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// failoverFirstEndpoint: prints READY, waits for a line on stdin (the caller kills the node
// behind the first endpoint meanwhile), then the same client must serve 50 puts and 50
// linearizable gets through the other endpoints.
func failoverFirstEndpoint(ctx context.Context, c *clientv3.Client, _ []string) error {
	if _, err := c.Put(ctx, "fo/before", "v"); err != nil {
		return err
	}
	fmt.Println("READY")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("reading the go-ahead: %v", err)
	}
	for i := 0; i < 50; i++ {
		key := fmt.Sprintf("fo/%02d", i)
		if err := retry(ctx, func(ctx context.Context) error {
			_, err := c.Put(ctx, key, "v")
			return err
		}); err != nil {
			return fmt.Errorf("put %s: %v", key, err)
		}
		if err := retry(ctx, func(ctx context.Context) error {
			r, err := c.Get(ctx, key)
			if err == nil && len(r.Kvs) != 1 {
				return fmt.Errorf("%s not read back", key)
			}
			return err
		}); err != nil {
			return fmt.Errorf("get %s: %v", key, err)
		}
	}
	return nil
}

// retry runs op (each try bounded by 2 s) until it succeeds or ctx ends: what a Go service
// does around a call while its client fails over.
func retry(ctx context.Context, op func(context.Context) error) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := op(tctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
