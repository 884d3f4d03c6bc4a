// pulumi-language-python is a small Python language host for the Pulumi engine.
//
// The engine starts it, reads the port it prints, and calls Run for every
// preview/up/destroy. Run starts `python -u pulumi-language-python-exec ...`,
// the upstream exec script (installed next to this binary by engine/build.sh),
// which connects the program to the engine's resource monitor.
//
// What it does: the virtualenv runtime option (Pulumi.yaml
// `runtime.options.virtualenv`), config and secret keys, exit code 32 (the
// program already showed its error), and GetRequiredPackages from the
// pulumi-plugin.json files of the installed Python packages.
// What it leaves out (Unimplemented): InstallDependencies, About, program
// generation and packing: `pulumi install` and `pulumi new` are not served.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// version is set by engine/build.sh (-ldflags "-X main.version=...").
var version = "0.0.0-dev"

// userActionableExit is the exec script's "error already shown" exit code.
const userActionableExit = 32

// listPlugins prints, as JSON, the pulumi-plugin.json of every installed
// distribution: the Python SDKs of providers ship one.
const listPlugins = `
import json, importlib.metadata as md
out = []
for d in md.distributions():
    for f in d.files or []:
        if f.name == "pulumi-plugin.json":
            try:
                out.append(json.loads(f.read_text()))
            except Exception:
                pass
print(json.dumps(out))
`

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
	execScript    string
}

func main() {
	// The engine passes flags (-tracing, -root, ...) and then its address.
	// Flags are not needed here, so anything starting with "-" is skipped.
	h := &host{}
	for _, a := range os.Args[1:] {
		if !strings.HasPrefix(a, "-") {
			h.engineAddress = a
		}
	}
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	h.execScript = filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	if _, err := os.Stat(h.execScript); err != nil {
		fail(fmt.Errorf("exec script missing next to the language host: %w", err))
	}

	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
	})
	if err != nil {
		fail(err)
	}
	fmt.Printf("%d\n", handle.Port) // the engine reads the port from stdout
	if err := <-handle.Done; err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

// python returns the interpreter: <root>/<virtualenv>/bin/python when the
// virtualenv option is set, else python3 from PATH.
func python(info *pulumirpc.ProgramInfo) (string, string) {
	venv := ""
	if opts := info.GetOptions(); opts != nil {
		if v, ok := opts.GetFields()["virtualenv"]; ok {
			venv = v.GetStringValue()
		}
	}
	if venv == "" {
		return "python3", ""
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	return filepath.Join(venv, "bin", "python"), venv
}

// pythonCmd builds a command with the virtualenv activated in its environment.
func pythonCmd(ctx context.Context, info *pulumirpc.ProgramInfo, args ...string) *exec.Cmd {
	py, venv := python(info)
	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Env = os.Environ()
	if venv != "" {
		cmd.Env = append(cmd.Env,
			"VIRTUAL_ENV="+venv,
			"PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	return cmd
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (h *host) GetRequiredPlugins(ctx context.Context,
	req *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	pkgs, err := h.packages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	resp := &pulumirpc.GetRequiredPluginsResponse{}
	for _, p := range pkgs {
		resp.Plugins = append(resp.Plugins, &pulumirpc.PluginDependency{
			Name: p.GetName(), Kind: p.GetKind(), Version: p.GetVersion(), Server: p.GetServer(),
		})
	}
	return resp, nil
}

func (h *host) GetRequiredPackages(ctx context.Context,
	req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	pkgs, err := h.packages(ctx, req.GetInfo())
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: pkgs}, nil
}

// packages reads the resource plugins that the installed Python packages declare.
func (h *host) packages(ctx context.Context, info *pulumirpc.ProgramInfo) ([]*pulumirpc.PackageDependency, error) {
	out, err := pythonCmd(ctx, info, "-c", listPlugins).Output()
	if err != nil {
		return nil, fmt.Errorf("listing Python packages: %w", err)
	}
	var found []struct {
		Resource bool   `json:"resource"`
		Name     string `json:"name"`
		Version  string `json:"version"`
		Server   string `json:"server"`
	}
	if err := json.Unmarshal(out, &found); err != nil {
		return nil, fmt.Errorf("listing Python packages: %w", err)
	}
	var pkgs []*pulumirpc.PackageDependency
	for _, f := range found {
		if !f.Resource || f.Name == "" {
			continue
		}
		pkgs = append(pkgs, &pulumirpc.PackageDependency{
			Kind: "resource", Name: f.Name, Version: f.Version, Server: f.Server,
		})
	}
	return pkgs, nil
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	info := req.GetInfo()
	program := info.GetEntryPoint()
	if program == "" {
		program = "."
	}
	args := []string{"-u", h.execScript}
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("root_directory", info.GetRootDirectory())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", fmt.Sprint(req.GetDryRun()))
	add("parallel", fmt.Sprint(req.GetParallel()))
	add("organization", req.GetOrganization())
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	config, err := json.Marshal(req.GetConfig())
	if err != nil {
		return nil, err
	}
	secretKeys, err := json.Marshal(req.GetConfigSecretKeys())
	if err != nil {
		return nil, err
	}
	cmd := pythonCmd(ctx, info, args...)
	cmd.Env = append(cmd.Env, "PULUMI_CONFIG="+string(config), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeys))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if info.GetProgramDirectory() != "" {
		cmd.Dir = info.GetProgramDirectory()
	}

	var exitErr *exec.ExitError
	switch err := cmd.Run(); {
	case err == nil:
		return &pulumirpc.RunResponse{}, nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == userActionableExit:
		return &pulumirpc.RunResponse{Bail: true}, nil
	case errors.As(err, &exitErr):
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode())}, nil
	default:
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run %s: %v", cmd.Path, err)}, nil
	}
}
