// Command check validates Grafana dashboard JSON files strictly, for CI:
//
//	go run . ../captain-bridge.json
//
// It decodes each file with the Grafana Foundation SDK's strict decoder (unknown or mistyped
// fields anywhere, panel options and Prometheus queries included, are errors), runs the SDK's
// validation, then checks what a dashboard for Prometheus needs: unique panel ids, panels
// inside the 24-column grid and not overlapping, every panel on the ${datasource} variable,
// every query a Prometheus query with a non-empty expression and a unique refId, and every
// $variable in an expression defined in the templating list or a Grafana built-in.
// Whether each expression returns data is checked against a real Prometheus by
// scripts/deploy-check.sh.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

// Grafana's built-in variables that may appear in a Prometheus expression.
var builtins = map[string]bool{
	"__rate_interval": true, "__interval": true, "__interval_ms": true,
	"__range": true, "__range_s": true, "__range_ms": true,
}

var variableRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: check DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		problems, summary, err := checkFile(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
			continue
		}
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "%s: %s\n", path, p)
		}
		if len(problems) > 0 {
			failed = true
			continue
		}
		fmt.Printf("%s: OK (%s)\n", path, summary)
	}
	if failed {
		os.Exit(1)
	}
}

func checkFile(path string) ([]string, string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	var d dashboard.Dashboard
	if err := orNil(d.UnmarshalJSONStrict(raw)); err != nil {
		return nil, "", fmt.Errorf("strict decoding: %w", err)
	}
	if err := orNil(d.Validate()); err != nil {
		return nil, "", fmt.Errorf("validation: %w", err)
	}
	// v0.0.22's PanelOrRowPanel drops every panel it decodes strictly, and Panel every query
	// (both stop at the typed nil above): errors are reported, panels and queries lost.
	// Decode them one by one instead; queries as Prometheus queries, the only kind allowed.
	d.Panels = nil
	var top struct {
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, "", err
	}
	for i, item := range top.Panels {
		var kind struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(item, &kind); err != nil {
			return nil, "", fmt.Errorf("panels[%d]: %w", i, err)
		}
		if kind.Type == "row" {
			row := &dashboard.RowPanel{}
			if err := orNil(row.UnmarshalJSONStrict(item)); err != nil {
				return nil, "", fmt.Errorf("panels[%d]: %w", i, err)
			}
			d.Panels = append(d.Panels, dashboard.PanelOrRowPanel{RowPanel: row})
			continue
		}
		panel := &dashboard.Panel{}
		if err := orNil(panel.UnmarshalJSONStrict(item)); err != nil {
			return nil, "", fmt.Errorf("panels[%d]: %w", i, err)
		}
		var targets struct {
			Targets []json.RawMessage `json:"targets"`
		}
		if err := json.Unmarshal(item, &targets); err != nil {
			return nil, "", fmt.Errorf("panels[%d].targets: %w", i, err)
		}
		panel.Targets = nil
		for j, target := range targets.Targets {
			query := &prometheus.Dataquery{}
			if err := orNil(query.UnmarshalJSONStrict(target)); err != nil {
				return nil, "", fmt.Errorf("panels[%d].targets[%d]: %w", i, j, err)
			}
			panel.Targets = append(panel.Targets, query)
		}
		d.Panels = append(d.Panels, dashboard.PanelOrRowPanel{Panel: panel})
	}
	return checkDashboard(&d)
}

type placed struct {
	name string
	pos  dashboard.GridPos
}

func checkDashboard(d *dashboard.Dashboard) ([]string, string, error) {
	var problems []string
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if d.Uid == nil || *d.Uid == "" {
		report("the dashboard has no uid (provisioning and links need a stable one)")
	}
	variables := map[string]bool{}
	for _, v := range d.Templating.List {
		variables[v.Name] = true
	}
	if !variables["datasource"] {
		report(`no "datasource" templating variable: panels must not be tied to one data source`)
	}

	ids := map[uint32]string{}
	var boxes []placed
	panels, queries := 0, 0
	place := func(name string, id uint32, pos *dashboard.GridPos) {
		if other, dup := ids[id]; dup {
			report("%s: id %d is also used by %s", name, id, other)
		}
		ids[id] = name
		if pos == nil {
			report("%s: no gridPos", name)
			return
		}
		if pos.W == 0 || pos.H == 0 || pos.X+pos.W > 24 {
			report("%s: gridPos %+v is outside the 24-column grid", name, *pos)
		}
		for _, b := range boxes {
			if overlap(b.pos, *pos) {
				report("%s overlaps %s", name, b.name)
			}
		}
		boxes = append(boxes, placed{name, *pos})
	}
	checkPanel := func(p *dashboard.Panel) {
		panels++
		name := fmt.Sprintf("panel %q", deref(p.Title))
		if p.Title == nil || *p.Title == "" {
			report("a %s panel has no title", p.Type)
		}
		if p.Id == nil {
			report("%s: no id", name)
		} else {
			place(name, *p.Id, p.GridPos)
		}
		if !onDatasourceVariable(p.Datasource) {
			report("%s: datasource must be {type: prometheus, uid: ${datasource}}", name)
		}
		if len(p.Targets) == 0 {
			report("%s: no query", name)
		}
		refIDs := map[string]bool{}
		for i, t := range p.Targets {
			q, ok := t.(*prometheus.Dataquery)
			if !ok {
				report("%s: target %d is not a Prometheus query (%T)", name, i, t)
				continue
			}
			queries++
			if q.Datasource == nil {
				report("%s: target %d names no data source", name, i)
			}
			ref := deref(q.RefId)
			if ref == "" || refIDs[ref] {
				report("%s: target %d has a missing or repeated refId %q", name, i, ref)
			}
			refIDs[ref] = true
			if strings.TrimSpace(q.Expr) == "" {
				report("%s: target %s has an empty expression", name, ref)
			}
			if q.Datasource != nil && !onDatasourceVariable(q.Datasource) {
				report("%s: target %s names another data source", name, ref)
			}
			for _, m := range variableRef.FindAllStringSubmatch(q.Expr, -1) {
				if !variables[m[1]] && !builtins[m[1]] {
					report("%s: target %s uses $%s, which is not a dashboard variable", name, ref, m[1])
				}
			}
		}
	}
	for _, item := range d.Panels {
		switch {
		case item.Panel != nil:
			checkPanel(item.Panel)
		case item.RowPanel != nil:
			row := item.RowPanel
			place(fmt.Sprintf("row %q", deref(row.Title)), row.Id, row.GridPos)
			for i := range row.Panels {
				checkPanel(&row.Panels[i])
			}
		}
	}
	if panels == 0 {
		report("no panel")
	}
	sort.Strings(problems)
	return problems, fmt.Sprintf("%d panels, %d Prometheus queries", panels, queries), nil
}

// onDatasourceVariable: the panel or query uses the dashboard's data source variable.
func onDatasourceVariable(ref *common.DataSourceRef) bool {
	return ref != nil && deref(ref.Type) == "prometheus" && deref(ref.Uid) == "${datasource}"
}

// orNil: the SDK returns its error list as a non-nil error interface even when the list is
// empty (a typed nil); an empty list is no error.
func orNil(err error) error {
	if list, ok := err.(cog.BuildErrors); ok && len(list) == 0 {
		return nil
	}
	return err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func overlap(a, b dashboard.GridPos) bool {
	return a.X < b.X+b.W && b.X < a.X+a.W && a.Y < b.Y+b.H && b.Y < a.Y+a.H
}
