// sgzd: a small stargz snapshotter daemon (a containerd proxy snapshotter)
// for tests/e2e/runtimes.sh, built from Debian's packaged stargz-snapshotter
// library (golang-github-containerd-stargz-snapshotter-dev), because Debian
// ships ctr-remote but not containerd-stargz-grpc. It wires the library's
// FUSE filesystem and snapshotter together itself: the library's `service`
// packages import k8s.io/cri-api, which Debian does not package.
//
// It reads the layout of containerd-stargz-grpc's config.toml (the fs keys
// at the top level, `[[resolver.host."docker.io".mirrors]]`), so the mirror
// block README shows is the one it is tested with.
package main

import (
	"context"
	"flag"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	sgzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// Config uses the same TOML layout as upstream's config.toml (fs keys at top level,
// [[resolver.host."docker.io".mirrors]] host="..." insecure=true).
type Config struct {
	fsconfig.Config
	Resolver struct {
		Host map[string]struct {
			Mirrors []struct {
				Host     string `toml:"host"`
				Insecure bool   `toml:"insecure"`
			} `toml:"mirrors"`
		} `toml:"host"`
	} `toml:"resolver"`
}

// hosts returns the configured mirrors for ref's host, followed by the host itself.
func hosts(cfg *Config) source.RegistryHosts {
	return func(ref reference.Spec) (out []docker.RegistryHost, _ error) {
		type m struct {
			host     string
			insecure bool
		}
		list := []m{}
		for _, mi := range cfg.Resolver.Host[ref.Hostname()].Mirrors {
			list = append(list, m{mi.Host, mi.Insecure})
		}
		list = append(list, m{ref.Hostname(), false})
		for _, h := range list {
			client := &http.Client{Timeout: 30 * time.Second, Transport: http.DefaultTransport} // Transport must be non-nil
			rh := docker.RegistryHost{Client: client, Host: h.host, Scheme: "https", Path: "/v2",
				Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
				Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client))}
			if local, _ := docker.MatchLocalhost(rh.Host); local || h.insecure {
				rh.Scheme = "http"
			}
			if rh.Host == "docker.io" {
				rh.Host = "registry-1.docker.io"
			}
			out = append(out, rh)
		}
		return out, nil
	}
}

func main() {
	addr := flag.String("address", "", "gRPC unix socket (required)")
	root := flag.String("root", "", "snapshotter root dir (required)")
	cfgPath := flag.String("config", "", "containerd-stargz-grpc's config.toml layout (required)")
	level := flag.String("log-level", "info", "log level")
	flag.Parse()
	if *addr == "" || *root == "" || *cfgPath == "" {
		logrus.Fatal("usage: sgzd -address SOCKET -root DIR -config FILE")
	}
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		logrus.Fatal(err)
	}
	logrus.SetLevel(lvl)
	ctx := log.WithLogger(context.Background(), log.L)

	var cfg Config
	if md, err := toml.DecodeFile(*cfgPath, &cfg); err != nil {
		log.G(ctx).WithError(err).Fatal("load config")
	} else if u := md.Undecoded(); len(u) > 0 {
		log.G(ctx).Warnf("unknown config keys: %v", u)
	}
	log.G(ctx).Infof("config: %+v", cfg)

	snRoot, fsRoot := filepath.Join(*root, "snapshotter"), filepath.Join(*root, "stargz")
	if err := os.MkdirAll(snRoot, 0700); err != nil {
		log.G(ctx).WithError(err).Fatal("mkdir root")
	}
	opq := layer.OverlayOpaqueTrusted
	if ux, _ := overlayutils.NeedsUserXAttr(snRoot); ux {
		opq = layer.OverlayOpaqueUser
	}
	fs, err := sgzfs.NewFilesystem(fsRoot, cfg.Config,
		sgzfs.WithGetSources(source.FromDefaultLabels(hosts(&cfg))), sgzfs.WithOverlayOpaqueType(opq))
	if err != nil {
		log.G(ctx).WithError(err).Fatal("new filesystem")
	}
	sn, err := snbase.NewSnapshotter(ctx, snRoot, fs, snbase.AsynchronousRemove)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("new snapshotter")
	}

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	os.Remove(*addr)
	l, err := net.Listen("unix", *addr)
	if err != nil {
		log.G(ctx).WithError(err).Fatal("listen")
	}
	go srv.Serve(l)
	log.G(ctx).Infof("listening on %s, root %s", *addr, *root)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Stop()
	if err := sn.Close(); err != nil { // unmounts FUSE layers
		log.G(ctx).WithError(err).Warn("close")
	}
}
