using System.Text;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Ha;

/// <summary>
/// Two brokers in one Akka cluster share the instance actors through sharding. Killing one (kill -9) while it
/// works on a provision loses neither the API nor the operation: the other broker answers, the split-brain
/// resolver (lease in etcd) removes the dead member, its shards move, and the provision finishes.
/// </summary>
[SuiteCost(77)]
public sealed class BrokerFailoverTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Killing_a_broker_mid_provision_leaves_the_other_answering_and_the_operation_finishes()
    {
        await using var platform = await TestPlatform.StartAsync(cells: 0, TestPlatform.NewSettings(), ownsData: true);
        await platform.StartCellProcessesAsync(1, 2);
        var url = platform.StartBrokerProcess(2);
        using var second = TestPlatform.ClientFor(url);
        await Eventually.UntilAsync(async () =>
        {
            try { return (await second.GetAsync("/v2/catalog")).IsSuccessStatusCode; }
            catch (HttpRequestException) { return false; }
        }, TimeSpan.FromSeconds(60), "the second broker answers");

        // Several provisions through the second broker: some instance actors live on it (sharding spreads them).
        var ids = Enumerable.Range(0, 4).Select(i => $"bf{i}-" + Guid.NewGuid().ToString("N")[..6]).ToList();
        foreach (var id in ids)
        {
            using var body = new StringContent(TestPlatform.ProvisionBody(Catalog.ClusterPlanId), Encoding.UTF8, "application/json");
            var response = await second.PutAsync($"/v2/service_instances/{id}?accepts_incomplete=true", body);
            Assert.Equal(System.Net.HttpStatusCode.Accepted, response.StatusCode);
        }
        platform.KillBroker(2);
        var killedAt = DateTime.UtcNow;
        output.WriteLine($"killed the second broker at {killedAt:HH:mm:ss.fff} with {ids.Count} provisions in flight");

        // The first broker answers throughout, and every operation in flight finishes.
        foreach (var id in ids)
        {
            var final = await platform.WaitForOperationAsync(id, TimeSpan.FromSeconds(120));
            Assert.True((string?)final["state"] == "succeeded", $"{id}: {final.ToJsonString()}");
        }
        output.WriteLine($"all {ids.Count} provisions finished {(DateTime.UtcNow - killedAt).TotalSeconds:0.0}s after the kill");
        var (status, catalog) = await platform.SendAsync(HttpMethod.Get, "/v2/catalog");
        Assert.Equal(200, status);
        Assert.NotNull(catalog["services"] as JsonArray);
    }
}
