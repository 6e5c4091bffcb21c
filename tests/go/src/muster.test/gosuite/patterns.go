package main

// The patterns built on clientv3: STM, watch, Mutex, Election, leasing KV, mirror, naming.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/clientv3/leasing"
	"go.etcd.io/etcd/clientv3/mirror"
	"go.etcd.io/etcd/clientv3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/clientv3/naming/resolver"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
)

// stmCounter: 4 goroutines × 50 increments of one counter in STM transactions = 200.
func stmCounter(ctx context.Context, c *clientv3.Client, key string, serializable bool) error {
	if _, err := c.Put(ctx, key, "0"); err != nil {
		return err
	}
	iso := concurrency.SerializableSnapshot
	if serializable {
		iso = concurrency.Serializable
	}
	err := inParallel(4, func() error {
		for i := 0; i < 50; i++ {
			_, err := concurrency.NewSTM(c, func(s concurrency.STM) error {
				n, err := strconv.Atoi(s.Get(key))
				if err != nil {
					return err
				}
				s.Put(key, strconv.Itoa(n+1))
				return nil
			}, concurrency.WithIsolation(iso), concurrency.WithAbortContext(ctx))
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	r, err := c.Get(ctx, key)
	if err != nil {
		return err
	}
	return check(string(r.Kvs[0].Value) == "200", "counter = %s, want 200", r.Kvs[0].Value)
}

func watchScenarios(ctx context.Context, c *clientv3.Client, _ []string) error {
	first, err := c.Put(ctx, "w/a", "1")
	if err != nil {
		return err
	}
	if _, err := c.Put(ctx, "w/b", "2"); err != nil {
		return err
	}
	if _, err := c.Put(ctx, "w/a", "3"); err != nil {
		return err
	}
	// From an old revision, with prev_kv, puts only.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := c.Watch(wctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision),
		clientv3.WithPrevKV(), clientv3.WithFilterDelete())
	var got []string
	for len(got) < 3 {
		select {
		case resp := <-wch:
			if err := resp.Err(); err != nil {
				return err
			}
			for _, ev := range resp.Events {
				prev := ""
				if ev.PrevKv != nil {
					prev = string(ev.PrevKv.Value)
				}
				got = append(got, fmt.Sprintf("%s=%s(prev %s)", ev.Kv.Key, ev.Kv.Value, prev))
			}
		case <-ctx.Done():
			return fmt.Errorf("history events: got %v", got)
		}
	}
	if err := check(fmt.Sprint(got) == "[w/a=1(prev ) w/b=2(prev ) w/a=3(prev 1)]", "history: %v", got); err != nil {
		return err
	}
	// A delete is filtered out; the next put arrives.
	if _, err := c.Delete(ctx, "w/b"); err != nil {
		return err
	}
	if _, err := c.Put(ctx, "w/c", "4"); err != nil {
		return err
	}
	select {
	case resp := <-wch:
		if err := check(len(resp.Events) == 1 && string(resp.Events[0].Kv.Key) == "w/c", "after the filtered delete: %v", resp.Events); err != nil {
			return err
		}
	case <-ctx.Done():
		return fmt.Errorf("no event after the delete")
	}
	// A progress request is answered on the stream.
	if err := c.RequestProgress(wctx); err != nil {
		return err
	}
	select {
	case resp := <-wch:
		if err := check(resp.IsProgressNotify(), "expected a progress notification: %+v", resp); err != nil {
			return err
		}
	case <-ctx.Done():
		return fmt.Errorf("no progress notification")
	}
	// A watch from a compacted revision is cancelled with ErrCompacted.
	last, err := c.Put(ctx, "w/d", "5")
	if err != nil {
		return err
	}
	if _, err := c.Compact(ctx, last.Header.Revision); err != nil {
		return err
	}
	// The watch may land on a node that has not applied the compaction yet (it serves the
	// history then, as an etcd follower would): ask again until it answers ErrCompacted.
	var seen string
	err = until(ctx, "a watch from a compacted revision to be cancelled", func() (bool, error) {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		defer acancel()
		cch := c.Watch(actx, "w/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
		resp, ok := <-cch
		if !ok {
			return false, nil
		}
		seen = fmt.Sprintf("err %v, compact revision %d", resp.Err(), resp.CompactRevision)
		return resp.Err() == rpctypes.ErrCompacted && resp.CompactRevision == last.Header.Revision, nil
	})
	if err != nil {
		return fmt.Errorf("%v (last answer: %s)", err, seen)
	}
	return nil
}

// mutexThreeContenders: three sessions take turns on one Mutex; never two holders at once.
func mutexThreeContenders(ctx context.Context, c *clientv3.Client, _ []string) error {
	var holders, maxHolders, turns int32
	err := inParallel(3, func() error {
		s, err := concurrency.NewSession(c, concurrency.WithTTL(5))
		if err != nil {
			return err
		}
		defer s.Close()
		m := concurrency.NewMutex(s, "/mutex/test")
		for j := 0; j < 5; j++ {
			if err := m.Lock(ctx); err != nil {
				return err
			}
			h := atomic.AddInt32(&holders, 1)
			for {
				old := atomic.LoadInt32(&maxHolders)
				if h <= old || atomic.CompareAndSwapInt32(&maxHolders, old, h) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond) // the scenario: hold the lock a moment
			atomic.AddInt32(&holders, -1)
			atomic.AddInt32(&turns, 1)
			if err := m.Unlock(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return check(maxHolders == 1 && turns == 15, "max holders %d, turns %d", maxHolders, turns)
}

func election(ctx context.Context, c *clientv3.Client, _ []string) error {
	s1, err := concurrency.NewSession(c, concurrency.WithTTL(5))
	if err != nil {
		return err
	}
	defer s1.Close()
	s2, err := concurrency.NewSession(c, concurrency.WithTTL(5))
	if err != nil {
		return err
	}
	defer s2.Close()
	e1 := concurrency.NewElection(s1, "/election/test")
	e2 := concurrency.NewElection(s2, "/election/test")
	if err := e1.Campaign(ctx, "one"); err != nil {
		return err
	}
	won := make(chan error, 1)
	go func() { won <- e2.Campaign(ctx, "two") }()
	l, err := e1.Leader(ctx)
	if err != nil {
		return err
	}
	if err := check(string(l.Kvs[0].Value) == "one", "leader %q", l.Kvs[0].Value); err != nil {
		return err
	}
	obs := e2.Observe(ctx)
	if err := e1.Resign(ctx); err != nil {
		return err
	}
	if err := <-won; err != nil {
		return err
	}
	for {
		select {
		case r := <-obs:
			if len(r.Kvs) > 0 && string(r.Kvs[0].Value) == "two" {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("the observer never saw the second leader")
		}
	}
}

func leasingKV(ctx context.Context, c *clientv3.Client, _ []string) error {
	lkv, closeLKV, err := leasing.NewKV(c, "leasing-pfx/")
	if err != nil {
		return err
	}
	defer closeLKV()
	if _, err := lkv.Put(ctx, "lk/k", "b"); err != nil {
		return err
	}
	if _, err := lkv.Get(ctx, "lk/k"); err != nil {
		return err
	}
	// Every user txn becomes a nested one inside the leasing KV's own.
	r, err := lkv.Txn(ctx).If(clientv3.Compare(clientv3.Value("lk/k"), "=", "b")).
		Then(clientv3.OpPut("lk/k", "c")).Else(clientv3.OpPut("lk/k", "d")).Commit()
	if err != nil {
		return fmt.Errorf("leasing txn: %v", err)
	}
	if err := check(r.Succeeded, "leasing txn took Else"); err != nil {
		return err
	}
	g, err := c.Get(ctx, "lk/k")
	if err != nil {
		return err
	}
	return check(string(g.Kvs[0].Value) == "c", "lk/k = %q", g.Kvs[0].Value)
}

func mirrorSyncer(ctx context.Context, c *clientv3.Client, _ []string) error {
	for i := 0; i < 5; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("mir/%d", i), "v"); err != nil {
			return err
		}
	}
	s := mirror.NewSyncer(c, "mir/", 0)
	base, errc := s.SyncBase(ctx)
	n := 0
	for r := range base {
		n += len(r.Kvs)
	}
	if err := <-errc; err != nil {
		return err
	}
	if err := check(n == 5, "base had %d keys", n); err != nil {
		return err
	}
	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	updates := s.SyncUpdates(uctx)
	if _, err := c.Put(ctx, "mir/new", "v"); err != nil {
		return err
	}
	select {
	case u := <-updates:
		return check(len(u.Events) == 1 && string(u.Events[0].Kv.Key) == "mir/new", "update: %v", u.Events)
	case <-ctx.Done():
		return fmt.Errorf("no update after the base")
	}
}

// fakeConn records what an etcd naming resolver tells gRPC.
type fakeConn struct {
	mu    sync.Mutex
	addrs []string
}

func (f *fakeConn) UpdateState(s resolver.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = f.addrs[:0]
	for _, a := range s.Addresses {
		f.addrs = append(f.addrs, a.Addr)
	}
}
func (f *fakeConn) ReportError(error)                       {}
func (f *fakeConn) NewAddress(addresses []resolver.Address) {}
func (f *fakeConn) NewServiceConfig(string)                 {}
func (f *fakeConn) ParseServiceConfig(string) *serviceconfig.ParseResult {
	return &serviceconfig.ParseResult{}
}
func (f *fakeConn) current() map[string]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]bool{}
	for _, a := range f.addrs {
		out[a] = true
	}
	return out
}

func namingEndpointsAndResolver(ctx context.Context, c *clientv3.Client, _ []string) error {
	em, err := endpoints.NewManager(c, "svc/orders")
	if err != nil {
		return err
	}
	for _, e := range []string{"10.0.0.1:80", "10.0.0.2:80"} {
		if err := em.AddEndpoint(ctx, "svc/orders/"+e, endpoints.Endpoint{Addr: e}); err != nil {
			return err
		}
	}
	// List reads serializably from whichever node the balancer picks, which may not have
	// applied the second add yet (as on etcd): poll.
	if err := until(ctx, "List to show both endpoints", func() (bool, error) {
		listed, err := em.List(ctx)
		return len(listed) == 2, err
	}); err != nil {
		return err
	}
	b, err := etcdresolver.NewBuilder(c)
	if err != nil {
		return err
	}
	conn := &fakeConn{}
	r, err := b.Build(resolver.Target{Scheme: "etcd", Endpoint: "svc/orders"}, conn, resolver.BuildOptions{})
	if err != nil {
		return err
	}
	defer r.Close()
	if err := until(ctx, "the resolver to give both addresses", func() (bool, error) {
		return len(conn.current()) == 2, nil
	}); err != nil {
		return fmt.Errorf("%v (has %v)", err, sortedStrings(conn.current()))
	}
	if err := em.DeleteEndpoint(ctx, "svc/orders/10.0.0.1:80"); err != nil {
		return err
	}
	return until(ctx, "the resolver to drop the removed address", func() (bool, error) {
		now := conn.current()
		return len(now) == 1 && now["10.0.0.2:80"], nil
	})
}

func clusterMaintenance(ctx context.Context, c *clientv3.Client, eps []string) error {
	ml, err := c.MemberList(ctx)
	if err != nil {
		return err
	}
	if err := check(len(ml.Members) == len(eps), "%d members for %d endpoints", len(ml.Members), len(eps)); err != nil {
		return err
	}
	for _, m := range ml.Members {
		if err := check(len(m.PeerURLs) == 1 && len(m.ClientURLs) == 1, "member %x: %v %v", m.ID, m.PeerURLs, m.ClientURLs); err != nil {
			return err
		}
	}
	leaders := map[uint64]bool{}
	var hashes []uint32
	rev := int64(0)
	for _, ep := range eps {
		st, err := c.Status(ctx, ep)
		if err != nil {
			return fmt.Errorf("status of %s: %v", ep, err)
		}
		leaders[st.Leader] = true
		if rev == 0 {
			rev = st.Header.Revision
		}
	}
	if err := check(len(leaders) == 1, "members disagree on the leader: %v", leaders); err != nil {
		return err
	}
	alarms, err := c.AlarmList(ctx)
	if err != nil {
		return err
	}
	if err := check(len(alarms.Alarms) == 0, "alarms: %v", alarms.Alarms); err != nil {
		return err
	}
	for _, ep := range eps {
		h, err := c.HashKV(ctx, ep, rev)
		if err != nil {
			return fmt.Errorf("hashkv of %s: %v", ep, err)
		}
		hashes = append(hashes, h.Hash)
	}
	for _, h := range hashes[1:] {
		if h != hashes[0] {
			return fmt.Errorf("members' hashes at revision %d differ: %v", rev, hashes)
		}
	}
	return nil
}

// inParallel runs f in n goroutines and returns the first error any returned.
func inParallel(n int, f func() error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
