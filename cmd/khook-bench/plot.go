package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	rawColor   = color.RGBA{R: 150, G: 150, B: 150, A: 255}
	khookColor = color.RGBA{R: 40, G: 110, B: 200, A: 255}
	pctColors  = []color.Color{color.RGBA{R: 60, G: 160, B: 90, A: 255}, color.RGBA{R: 230, G: 150, B: 30, A: 255}, color.RGBA{R: 200, G: 50, B: 50, A: 255}}
)

// plotReport draws throughput per scenario (raw grey, khook blue) beside latency
// percentiles at the first offered load, into one PNG the README embeds.
func plotReport(rep *Report, path string) error {
	var names []string
	var raw, kh plotter.Values
	for _, r := range rep.Results {
		names = append(names, r.Name)
		if r.Kind == "raw" {
			raw, kh = append(raw, r.EventsPerSec), append(kh, 0)
		} else {
			raw, kh = append(raw, 0), append(kh, r.EventsPerSec)
		}
	}
	if len(names) == 0 {
		return nil
	}
	tp := plot.New()
	tp.Title.Text = "Throughput at saturation"
	tp.Y.Label.Text = "events/s"
	w := vg.Points(18)
	for _, s := range []struct {
		v plotter.Values
		c color.Color
		l string
	}{{raw, rawColor, "raw JetStream"}, {kh, khookColor, "khook"}} {
		b, err := plotter.NewBarChart(s.v, w)
		if err != nil {
			return err
		}
		b.Color, b.LineStyle.Width = s.c, 0
		tp.Add(b)
		tp.Legend.Add(s.l, b)
	}
	tp.Legend.Top = true
	tp.NominalX(names...)
	rotate(tp)

	lp := plot.New()
	if len(rep.Rates) > 0 {
		rate := rep.Rates[0]
		lp.Title.Text = fmt.Sprintf("Latency at %d events/s offered", rate)
		lp.Y.Label.Text = "ms"
		for i, pct := range []string{"p50", "p99", "p99.9"} {
			var v plotter.Values
			for _, r := range rep.Results {
				x := 0.0
				if len(r.Latency) > 0 && r.Latency[0].Received > 0 {
					x = []float64{r.Latency[0].P50, r.Latency[0].P99, r.Latency[0].P999}[i]
				}
				v = append(v, x)
			}
			b, err := plotter.NewBarChart(v, w)
			if err != nil {
				return err
			}
			b.Color, b.LineStyle.Width = pctColors[i], 0
			b.Offset = vg.Length(i-1) * w
			lp.Add(b)
			lp.Legend.Add(pct, b)
		}
		lp.Legend.Top = true
		lp.NominalX(names...)
		rotate(lp)
	}

	img := vgimg.New(vg.Points(1400), vg.Points(560))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{{tp, lp}}, tiles, dc)
	tp.Draw(canvases[0][0])
	lp.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	return err
}

func rotate(p *plot.Plot) {
	p.X.Tick.Label.Rotation = math.Pi / 5
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
}
