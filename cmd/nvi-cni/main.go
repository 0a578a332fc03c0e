// Command nvi-cni is NVI's CNI plugin (type "nvi-cni"): container runtimes
// (Podman, containerd, CRI-O, Kubernetes) run it to attach a container to an
// NVI tenant network through the server's nvid. See package nvi/cni.
package main

import (
	"os"

	"nvi/cni"
)

func main() {
	os.Exit(cni.New(os.Stderr).Run(os.Getenv, os.Stdin, os.Stdout))
}
