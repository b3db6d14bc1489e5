// imds-sdk-client: the real aws-sdk-go-v2 IMDS client (feature/ec2/imds,
// the one aws-load-balancer-controller uses), built from Debian's
// golang-github-aws-aws-sdk-go-v2-dev.  It fetches one metadata path the
// way the controller does: a token PUT, then a GET carrying the token.
//
// It contacts 169.254.169.254, which on these machines is real
// infrastructure in the root network namespace: it refuses to run unless
// its network namespace differs from PID 1's.  Where PID 1's namespace
// cannot be read (a sandbox that hides it), it runs only in a named test
// namespace, one of /run/netns/imdst-* (the testbed's and capture.sh's).
//
//	imds-sdk-client [PATH]     (default: instance-id)
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

func main() {
	if why := notInATestNamespace(); why != "" {
		fmt.Fprintf(os.Stderr, "imds-sdk-client: refusing to run: %s; run it inside a test namespace\n", why)
		os.Exit(2)
	}
	path := "instance-id"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := imds.New(imds.Options{})
	out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		fmt.Fprintf(os.Stderr, "imds-sdk-client: GetMetadata %s: %v\n", path, err)
		os.Exit(1)
	}
	defer out.Content.Close()
	body, _ := io.ReadAll(out.Content)
	fmt.Printf("%s: %d bytes\n", path, len(body))
}

// Why this process may not be in a test network namespace ("" when it is).
func notInATestNamespace() string {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return "cannot read /proc/self/ns/net: " + err.Error()
	}
	if root, err := os.Readlink("/proc/1/ns/net"); err == nil {
		if root == self {
			return "this is PID 1's network namespace (" + self + ")"
		}
		return ""
	}
	// PID 1 hidden: accept only a named testbed namespace.
	var me syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &me); err != nil {
		return "cannot stat /proc/self/ns/net: " + err.Error()
	}
	named, _ := filepath.Glob("/run/netns/imdst-*")
	for _, n := range named {
		var st syscall.Stat_t
		if syscall.Stat(n, &st) == nil && st.Ino == me.Ino && st.Dev == me.Dev {
			return ""
		}
	}
	return "PID 1's network namespace cannot be read and " + self + " is not one of /run/netns/imdst-*"
}
