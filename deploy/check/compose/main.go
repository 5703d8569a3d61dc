// Command compose validates a docker-compose file as `docker compose config` would, with the
// library Docker Compose itself is built on (compose-go): the Compose Specification's JSON
// schema, interpolation, normalization and its consistency checks (depends_on, networks,
// volumes). Then what `config` does not check: every bind-mounted file or directory exists,
// every image not built here names a tag, and every depends_on condition service_healthy
// points at a service with a health check (its own or its image's, which is only known for
// images built here: they must then not disable it).
//
//	go run ./compose ../../docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: compose docker-compose.yml")
		os.Exit(2)
	}
	path, err := filepath.Abs(os.Args[1])
	if err != nil {
		fail(err)
	}
	options, err := cli.NewProjectOptions([]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithOsEnv,
		cli.WithConsistency(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	var problems []string
	names := make([]string, 0, len(project.Services))
	for name, service := range project.Services {
		names = append(names, name)
		for _, v := range service.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				problems = append(problems, fmt.Sprintf("service %s mounts %s, which does not exist", name, v.Source))
			}
		}
		if service.Build == nil && !hasTag(service.Image) {
			problems = append(problems, fmt.Sprintf("service %s: image %q names no tag", name, service.Image))
		}
		for dep, d := range service.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				continue
			}
			target := project.Services[dep]
			if target.HealthCheck != nil && target.HealthCheck.Disable {
				problems = append(problems, fmt.Sprintf("service %s waits for %s to be healthy, whose health check is disabled", name, dep))
			}
			if target.HealthCheck == nil && target.Build == nil {
				problems = append(problems, fmt.Sprintf("service %s waits for %s to be healthy, which has no health check here", name, dep))
			}
		}
	}
	sort.Strings(names)
	sort.Strings(problems)
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "%s: %s\n", path, p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: OK (project %s, services: %s)\n", path, project.Name, strings.Join(names, ", "))
}

// hasTag: `name:tag` or `name@digest`, a registry port (`host:5000/name`) is not a tag.
func hasTag(image string) bool {
	if strings.Contains(image, "@") {
		return true
	}
	last := image[strings.LastIndex(image, "/")+1:]
	return strings.Contains(last, ":")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
