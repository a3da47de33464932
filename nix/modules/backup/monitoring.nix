# Metrics and alerts: btrsync writes btrsync.prom into a node_exporter textfile directory after
# every run; when node_exporter is enabled on the host its textfile collector reads that
# directory, and when Prometheus runs on the host the alert rules of monitoring/alerts.yml are
# added to it (docs/metrics.md).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.services.btrsync;
  mcfg = cfg.monitoring;
  nodeExporter = config.services.prometheus.exporters.node.enable or false;
  prometheus = config.services.prometheus.enable or false;
in
{
  options.services.btrsync.monitoring = {
    enable = mkOption { type = types.bool; default = true; description = "Write the metrics file `btrsync.prom` after every run."; };
    metricsDir = mkOption {
      type = types.str;
      default = "/var/lib/prometheus-node-exporter-text-files";
      description = "node_exporter textfile directory btrsync writes `btrsync.prom` into (created by tmpfiles, mode 0755).";
    };
    nodeExporterTextfile = mkOption {
      type = types.bool;
      default = true;
      description = "When `services.prometheus.exporters.node` is enabled, point its textfile collector at `metricsDir`.";
    };
    alertRules = mkOption {
      type = types.bool;
      default = true;
      description = "When `services.prometheus` runs on this host, add btrsync's alert rules (monitoring/alerts.yml) to its rule files.";
    };
  };

  config = lib.mkIf cfg.enable {
    services.btrsync.settings.metrics_dir = if mcfg.enable then mcfg.metricsDir else "";
    systemd.tmpfiles.rules = lib.optional mcfg.enable "d ${mcfg.metricsDir} 0755 root root -";

    services.prometheus.exporters.node.enabledCollectors = lib.mkIf (mcfg.enable && mcfg.nodeExporterTextfile && nodeExporter) [ "textfile" ];
    services.prometheus.exporters.node.extraFlags = lib.mkIf (mcfg.enable && mcfg.nodeExporterTextfile && nodeExporter)
      [ "--collector.textfile.directory=${mcfg.metricsDir}" ];
    # a rule file of its own: services.prometheus.rules are concatenated into one YAML document,
    # where btrsync's `groups:` would clash with another module's
    services.prometheus.ruleFiles = lib.mkIf (mcfg.alertRules && prometheus) [ ../../../monitoring/alerts.yml ];
  };
}
